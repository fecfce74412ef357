"""Test helpers: real server processes on private sockets, always stopped by pid."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import psutil
from django.test import override_settings

from django_tasks_shared.client.connection import StoreClient
from django_tasks_shared.client.options import derive_authkey, parse_address
from django_tasks_shared.exceptions import ServerUnavailable

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
MANAGE = os.path.join(TESTS_DIR, "manage.py")
SECRET_KEY = "tests-secret-key-not-for-production-0123456789"


CREATED_DIRS = []  # removed at the end of the session (conftest.py)


class Clock:
    """A manual clock for a TaskStore or a scheduler (clock=Clock()): deferral, TTLs, windows
    and schedules tested without sleeping."""

    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def temp_dir(prefix="dts-"):
    """A short temporary directory, removed at the end of the test session."""
    directory = tempfile.mkdtemp(prefix=prefix)
    CREATED_DIRS.append(directory)
    return directory


def short_socket_path(name="tasks.sock"):
    """A unix socket path well under the 107-byte limit (pytest's tmp_path can be long)."""
    return os.path.join(temp_dir(), name)


def child_env(address=None, options=None, backend=None, **extra):
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="testproject.settings",
               PYTHONPATH=os.pathsep.join([TESTS_DIR] + sys.path))
    env.pop("TASKS_ADDRESS", None)
    env.pop("TASKS_OPTIONS", None)
    if address:
        env["TASKS_ADDRESS"] = address
    if options:
        env["TASKS_OPTIONS"] = json.dumps(options)
    if backend:
        env["TASKS_BACKEND"] = backend
    env.update(extra)
    return env


def stop_process(popen, timeout=10.0):
    """SIGTERM by pid, then SIGKILL; also kills anything it left behind (by pid)."""
    try:
        descendants = psutil.Process(popen.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)
    for proc in descendants:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return popen.returncode


def wait_until(predicate, timeout=10.0, interval=0.05, message="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def ping(address, authkey=None, timeout=1.0):
    authkey = authkey or derive_authkey(SECRET_KEY, "default")
    try:
        return StoreClient(parse_address(address), authkey, timeout=timeout).call("ping")
    except ServerUnavailable:
        return None


class ServerProcess:
    """`manage.py tasks_server` in a subprocess on its own socket."""

    def __init__(self, address=None, options=None, backend=None, args=(), env=None):
        self.address = address or short_socket_path()
        self.options = dict(options or {})
        self.env = child_env(self.address, self.options, backend, **(env or {}))
        self.popen = subprocess.Popen(
            [sys.executable, MANAGE, "tasks_server", *args], env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_ready(self, timeout=20.0):
        wait_until(lambda: ping(self.address) or self.popen.poll() is not None, timeout,
                   message=f"tasks_server at {self.address}")
        if self.popen.poll() is not None:
            raise AssertionError(f"tasks_server exited: {self.popen.stdout.read()}")
        return self

    def settings(self, **options):
        """override_settings pointing this process's default backend at the server."""
        return tasks_settings(self.address, {**self.options, **options})

    def client(self):
        return StoreClient(parse_address(self.address), derive_authkey(SECRET_KEY, "default"))

    def stop(self, timeout=15.0):
        return stop_process(self.popen, timeout)

    def output(self):
        return self.popen.stdout.read() if self.popen.poll() is not None else ""


def tasks_settings(address, options=None, backend="django_tasks_shared.ProcessPoolBackend"):
    return override_settings(TASKS={"default": {
        "BACKEND": backend, "QUEUES": ["default", "emails"],
        "OPTIONS": {**(options or {}), "ADDRESS": address}}})


@contextlib.contextmanager
def running_server(options, env=None, args=("--grace", "1")):
    """A ready `tasks_server` (ServerProcess) for the block, stopped by pid afterwards."""
    srv = ServerProcess(options=options, env=env, args=args)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
