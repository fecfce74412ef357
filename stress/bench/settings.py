"""Settings of the benchmark and the demo (`python -m stress.bench`, `python -m stress.demo`).

Workers import this module by name (DJANGO_SETTINGS_MODULE=stress.bench.settings), so it is a
real module, run from the repository root. Aliases:

    default  django_tasks_shared.ProcessPoolBackend, 2 workers, embedded server (no ADDRESS)
             unless BENCH_TASKS_ADDRESS names a socket of a started `tasks_server`
    local    django_tasks_local.ProcessPoolBackend, MAX_WORKERS=2 (the comparison; optional)

    state_everysec, state_always, state_never
             the same as default plus STATE_DIR and that FSYNC, when BENCH_STATE_ROOT is set

MAX_RESULTS is raised so that the 2,000 results of W1 are all still there when we wait for them.
"""

import os

from stress.common.base_settings import *  # noqa: F403

SECRET_KEY = os.environ.get("BENCH_SECRET_KEY", "bench-secret-key-not-for-production-0123456789")

_options = {"WORKERS": int(os.environ.get("BENCH_WORKERS", "2")), "MAX_RESULTS": 10_000}
if os.environ.get("BENCH_TASKS_ADDRESS"):
    _options["ADDRESS"] = os.environ["BENCH_TASKS_ADDRESS"]

TASKS = {
    "default": {"BACKEND": "django_tasks_shared.ProcessPoolBackend", "OPTIONS": _options},
}
# W1 with a STATE_DIR (stress/bench/durable.py): one embedded server per FSYNC mode, each with
# its own state directory under BENCH_STATE_ROOT (set by the benchmark before django.setup()).
if os.environ.get("BENCH_STATE_ROOT"):
    _embedded = {k: v for k, v in _options.items() if k != "ADDRESS"}  # one server per alias
    for _mode in ("everysec", "always", "never"):
        TASKS[f"state_{_mode}"] = {
            "BACKEND": "django_tasks_shared.ProcessPoolBackend",
            "OPTIONS": dict(_embedded, FSYNC=_mode,
                            STATE_DIR=os.path.join(os.environ["BENCH_STATE_ROOT"], _mode))}
try:
    import django_tasks_local  # noqa: F401  (only the benchmark needs it)
except ImportError:
    pass
else:
    TASKS["local"] = {"BACKEND": "django_tasks_local.ProcessPoolBackend",
                      "OPTIONS": {"MAX_WORKERS": 2, "MAX_RESULTS": 10_000}}
