"""The supported Python x Django combinations, tested with nox (`./scripts/test` runs it).

    ./scripts/test ── ruff, lint-imports, mypy, then the WHOLE suite in .venv (its Python, its
                   │  Django: the newest of each that the machine has)
                   └─ nox ── `compat`: a fast subset (COMPAT_TESTS) on every OTHER combination
                             of PYTHONS x DJANGOS, each in its own venv (.nox/), made by uv

DTS_FULL_SUITE_ON="3.13-6.1" (set by scripts/test) names the combination the whole suite ran
on; `compat` skips it. By hand: `nox` (every combination but that one), one of them with
`nox -s "compat-3.12(django='6.0')"`, or the whole suite on one combination with
`nox -s "suite-3.12(django='6.0')"` (several minutes; not run by CI).

uv makes and fills each venv in seconds (pip took ~26 s a combination here); it never downloads
a Python (UV_PYTHON_DOWNLOADS=never): the interpreters are the machine's (scripts/bootstrap.sh
puts pyenv's on PATH), and a missing one fails the run on CI (nox's default there).
"""

import os

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["compat"]
nox.options.error_on_missing_interpreters = True  # a combination is never skipped unsaid
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")
# .pyc files at install, as pip makes them: otherwise every server, worker and manage.py the
# tests start compiles Django again until one of them has written its cache.
os.environ.setdefault("UV_COMPILE_BYTECODE", "1")

PYTHONS = ["3.12", "3.13"]
DJANGOS = ["6.0", "6.1"]  # pyproject.toml's classifiers name the same

# What depends on the Django and Python versions: Django's task backend contract (enqueue,
# results, signals, async tasks, context, the thread pool), task execution in the worker
# (django.setup, database connections), the retry policy, the web page (templates, auth,
# CSRF) and the commands (tasks_server in every test, tasks_health), against real servers and
# workers; plus the pure store tests. Left out: the wire's failure modes (no Django in them) and
# the render-time benchmark (it needs a quiet machine, not another Django).
COMPAT_TESTS = [
    "tests/test_smoke.py",
    "tests/test_backend.py",
    "tests/test_execution.py",
    "tests/test_store.py",
    "tests/test_web_data.py",
    "tests/test_web_views.py",
    "tests/test_retries.py::test_flaky_task_succeeds_on_its_third_attempt_after_growing_delays",
    "tests/test_health.py::test_unreachable_when_nothing_listens",
    "-k", "not (p95 or reconnect or stalled or server_down or across_fork or wrong_authkey or "
          "lru_eviction)",
]
# What COMPAT_TESTS import besides the package and its dependencies (the `test` extra is much
# bigger: the browser, linters, type checkers, benchmarks).
COMPAT_DEPS = ["pytest>=8", "pytest-timeout>=2.3", "pytest-django>=4.9", "hypothesis>=6.100",
               "prometheus-client>=0.20"]


def _skip_the_full_suite_one(session, django):
    if os.environ.get("DTS_FULL_SUITE_ON") == f"{session.python}-{django}":
        session.skip(f"the whole suite ran on Python {session.python} with Django {django}")


def _check_versions(session, django):
    """The venv holds the Python and Django it is named for (not whatever the resolver chose)."""
    session.run("python", "-c", (
        "import sys, django\n"
        f"want = ({session.python!r}, {django!r})\n"
        "have = ('%d.%d' % sys.version_info[:2], '%d.%d' % django.VERSION[:2])\n"
        "print('Python', sys.version.split()[0], 'Django', django.get_version())\n"
        "sys.exit(0 if have == want else f'wanted {want}, got {have}')"), silent=False)


@nox.session(python=PYTHONS)
@nox.parametrize("django", DJANGOS)
def compat(session, django):
    """The fast subset on one combination."""
    _skip_the_full_suite_one(session, django)
    session.install("-e", ".", f"django~={django}.0", *COMPAT_DEPS)
    _check_versions(session, django)
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *COMPAT_TESTS,
                *session.posargs)


@nox.session(python=PYTHONS)
@nox.parametrize("django", DJANGOS)
def suite(session, django):
    """The whole suite on one combination (by hand: several minutes each)."""
    session.install("-e", ".[test,bench]", f"django~={django}.0")
    _check_versions(session, django)
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", *session.posargs)
