"""What users install: `python -m build` makes the sdist and, from it, the wheel (so the sdist is
complete too); both pass `twine check`; the wheel holds every module, template and static file
and says which Pythons and Djangos it supports; and a FRESH venv that installs only the wheel
(with its declared dependencies, from the index) runs the demo's job and serves the page.

The demo (`python -m stress.demo`) is not in the wheel: the job runs from a tiny project as a
user writes it from docs/quickstart.md (tests/fixtures/wheel_project), copied to a temporary
directory, so nothing of this source tree is on the venv's path. Every process is stopped by pid.
"""

import email
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile

import pytest

from django_tasks_shared.client.options import derive_authkey
from helpers import TESTS_DIR, ping, stop_process, temp_dir, wait_until
from live_site import free_port

ROOT = os.path.dirname(TESTS_DIR)
PACKAGE = os.path.join(ROOT, "src", "django_tasks_shared")
PROJECT = os.path.join(TESTS_DIR, "fixtures", "wheel_project")
SHIPPED = (".py", ".html", ".css", ".js", ".typed")
SHOP_SECRET_KEY = "wheel-test-secret-key-not-for-production-0123456789"  # its settings.py
VERSION_LINE = re.compile(r'^version = "([^"]+)"', re.M)


@pytest.fixture(scope="module")
def dist():
    """{"wheel", "sdist"}: built by `python -m build` (the sdist, then the wheel from it)."""
    out = temp_dir("dts-dist-")
    done = subprocess.run([sys.executable, "-m", "build", "--installer", "uv", "--outdir", out,
                           ROOT], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PATH=os.path.dirname(_uv()) + os.pathsep +
                                   os.environ.get("PATH", "")))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    names = os.listdir(out)
    (wheel,) = [n for n in names if n.endswith(".whl")]
    (sdist,) = [n for n in names if n.endswith(".tar.gz")]
    return {"wheel": os.path.join(out, wheel), "sdist": os.path.join(out, sdist)}


def _source_files():
    found = set()
    for directory, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(SHIPPED):
                path = os.path.relpath(os.path.join(directory, name), os.path.dirname(PACKAGE))
                found.add(path.replace(os.sep, "/"))
    return found


@pytest.mark.timeout(300)
def test_the_wheel_holds_every_module_template_and_static_file(dist):
    with zipfile.ZipFile(dist["wheel"]) as archive:
        names = set(archive.namelist())
    source = _source_files()
    assert {p for p in source if p.endswith("/__init__.py")} >= {
        f"django_tasks_shared/{sub}/__init__.py" for sub in (
            "protocol", "client", "server", "store", "durable", "supervision", "worker",
            "schedules", "health", "web", "management", "management/commands")}
    assert any(p.endswith(".html") for p in source) and any(p.endswith(".js") for p in source)
    missing = sorted(source - names)
    assert not missing, f"not in {os.path.basename(dist['wheel'])}: {missing}"
    stale = sorted(n for n in names if n.startswith("django_tasks_shared/") and n not in source)
    assert not stale, f"in the wheel but not in the source tree (a stale build/?): {stale}"
    with tarfile.open(dist["sdist"]) as archive:
        members = {m.split("/", 1)[1] for m in archive.getnames() if "/" in m}
    for name in ("pyproject.toml", "README.md", "CHANGELOG.md", "LICENSE"):
        assert name in members, name
    # the licence text pyproject's `license` names, in the wheel's metadata (PEP 639: licenses/)
    assert any(n.endswith("/LICENSE") and ".dist-info/" in n for n in names), sorted(
        n for n in names if ".dist-info/" in n)


@pytest.mark.timeout(120)
def test_twine_check_passes_and_the_metadata_says_what_is_supported(dist):
    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict",
                           dist["sdist"], dist["wheel"]],
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout + done.stderr
    with zipfile.ZipFile(dist["wheel"]) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(archive.read(name))
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert meta["Version"] == VERSION_LINE.search(f.read()).group(1)
    assert meta["Requires-Python"] == ">=3.12"
    classifiers = set(meta.get_all("Classifier"))
    assert {"Framework :: Django :: 6.0", "Framework :: Django :: 6.1",
            "Programming Language :: Python :: 3.12",
            "Programming Language :: Python :: 3.13"} <= classifiers
    requires = " ".join(meta.get_all("Requires-Dist"))
    for dependency in ("django>=6.0", "psutil", "cronsim", "tzdata"):
        assert dependency in requires, dependency


def _uv():
    """uv (a test dependency): it makes the venvs and installs in seconds where pip takes ~25 s
    on this machine; an ordinary client of the same index, resolving the same metadata."""
    uv = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
    assert uv, "uv is missing: install the test extra (pip install -e '.[test]')"
    return uv


def _venv_with_only_the_wheel(wheel):
    """A fresh venv (the interpreter running the tests, without this tree) + the wheel + its
    declared dependencies from the index."""
    venv = os.path.join(temp_dir("dts-venv-"), "venv")
    base = getattr(sys, "_base_executable", sys.executable)
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never", UV_COMPILE_BYTECODE="1")
    env.pop("VIRTUAL_ENV", None)
    for args in (["venv", "-q", "--python", base, venv],
                 ["pip", "install", "-q", "--python", os.path.join(venv, "bin", "python"),
                  wheel]):
        done = subprocess.run([_uv(), *args], capture_output=True, text=True, timeout=240,
                              env=env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return os.path.join(venv, "bin", "python")


def _project_env(directory, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE", "VIRTUAL_ENV")}
    # Its own runtime directory: the embedded server's derived socket is per user and settings
    # module, so another run of this test on the machine must not find ours.
    runtime = temp_dir("dts-xdg-")
    os.chmod(runtime, 0o700)
    env.update(DJANGO_SETTINGS_MODULE="shop.settings", XDG_RUNTIME_DIR=runtime,
               SHOP_DB=os.path.join(directory, "shop.sqlite3"), **extra)
    return env


def _fetch(url, cookie=None):
    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), \
                response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


@pytest.mark.timeout(420)
def test_a_fresh_venv_with_only_the_wheel_runs_the_demo_and_serves_the_page(dist):
    started = time.monotonic()
    python = _venv_with_only_the_wheel(dist["wheel"])
    installed = time.monotonic()
    directory = os.path.join(temp_dir("dts-shop-"), "shop")
    shutil.copytree(PROJECT, directory)
    env = _project_env(directory)

    def run(*args, **kwargs):
        done = subprocess.run([python, *args], cwd=directory, env=env, capture_output=True,
                              text=True, timeout=180, **kwargs)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    # The package comes from the venv, with its templates: not from this source tree.
    where = json.loads(run("-c", (
        "import json, django_tasks_shared, django\n"
        "from importlib.metadata import version\n"
        "print(json.dumps([django_tasks_shared.__file__, version('django-tasks-shared'),"
        " django.get_version()]))")))
    assert where[0].startswith(os.path.dirname(os.path.dirname(python))), where
    assert not where[0].startswith(ROOT), where
    assert where[1] == os.path.basename(dist["wheel"]).split("-")[1], where

    # The demo's job: several processes, one embedded server, every result seen by every process.
    out = run("demo.py", "3", "20")
    demo = time.monotonic()
    print(f"\n[measure] venv + install of the wheel {installed - started:.1f} s, demo "
          f"{demo - installed:.1f} s: {out.strip().splitlines()[-1]} (Django {where[2]})")
    assert re.search(r"^OK: 60 tasks from 3 processes on one embedded server .* 120 "
                     r"cross-process lookups$", out, re.M), out

    # The page: tasks_server + runserver from the venv, a staff session, real HTTP.
    run("manage.py", "migrate", "--noinput")
    cookie = "sessionid=" + run("manage.py", "shell", "-c", (
        "from django.contrib.auth.models import User\n"
        "from django.test import Client\n"
        "user = User.objects.create_user('staff', password='x', is_staff=True)\n"
        "client = Client()\n"
        "client.force_login(user)\n"
        "print(client.cookies['sessionid'].value)")).split()[-1]
    address = os.path.join(temp_dir(), "tasks.sock")
    env["SHOP_TASKS_ADDRESS"] = address
    port = free_port()
    server = subprocess.Popen([python, "manage.py", "tasks_server", "--grace", "1"],
                              cwd=directory, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    site = subprocess.Popen([python, "manage.py", "runserver", "--noreload",
                             f"127.0.0.1:{port}"], cwd=directory, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        authkey = derive_authkey(SHOP_SECRET_KEY, "default")
        wait_until(lambda: ping(address, authkey) or server.poll() is not None, 30,
                   message="tasks_server from the venv")
        assert server.poll() is None, server.stdout.read()
        task_id = run("manage.py", "shell", "-c", (
            "from django_tasks_shared import wait\n"
            "from shop.tasks import square\n"
            "print(wait(square.enqueue(7, 'page'), timeout=60).id)")).split()[-1]
        wait_until(lambda: _fetch(f"{url}/admin/login/")[0] == 200, 30,
                   message="runserver answering")
        status, _, overview = _fetch(f"{url}/tasks/", cookie)
        assert status == 200, overview[:2000]
        for text in ("Workers", "Recent results", f"pid</dt><dd>{server.pid}",
                     f"version</dt><dd>{where[1]}", task_id, "/tasks/assets/dashboard.css"):
            assert text in overview, text
        status, content_type, css = _fetch(f"{url}/tasks/assets/dashboard.css")
        assert status == 200 and content_type.startswith("text/css") and ".pill" in css
        status, _, js = _fetch(f"{url}/tasks/assets/dashboard.js")
        assert status == 200 and "data-live" in js
        status, _, page = _fetch(f"{url}/tasks/{task_id}/", cookie)
        assert status == 200 and "SUCCESSFUL" in page and '"square": 49' in html.unescape(page)
        assert _fetch(f"{url}/tasks/")[0] == 200  # anonymous: the admin's log-in page
        print(f"[measure] the page from the venv: {time.monotonic() - demo:.1f} s")
    finally:
        stop_process(site)
        stop_process(server)
