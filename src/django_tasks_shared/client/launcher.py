"""Starting a server on demand: embedded mode (no ADDRESS) and AUTOSTART.

    client call fails with ServerUnavailable
      -> ensure_server(config): flock <address>.start.lock  (one starter at a time, any process)
           -> ping answers?  someone else started it: done
           -> else Popen(python -c server.main), spec as JSON on stdin; wait until it answers
      -> the call is retried once

Embedded: the server is our child with owner_pid = our pid; it stops when we die (it polls its
parent pid), and at our clean exit we SIGTERM it. AUTOSTART: the server is detached (its own
session, output to <address>.log) and outlives us.
"""

import atexit
import fcntl
import os
import subprocess
import time

from ..exceptions import ServerUnavailable
from ..protocol.config import describe
from ..protocol.paths import make_socket_dir, open_log, send_spec, side_file, start_python
from ..schedules.resolve import resolve_config
from .connection import StoreClient

SERVER_CMD = "from django_tasks_shared.server import main; main()"
START_TIMEOUT = 15.0
# address -> (Popen, pid of the process that started it) of an embedded server we started
_owned: dict = {}


def _start_lock_path(address):
    return side_file(address, ".start.lock")


def _alive(config):
    try:  # a probe: one try, no stall retries
        StoreClient(config.address, config.authkey, timeout=1.0, patience=0).call("ping")
        return True
    except ServerUnavailable:
        return False


def ensure_server(config, timeout=START_TIMEOUT):
    """Make sure a server answers at config.address, starting one if nobody else does."""
    if isinstance(config.address, str):
        make_socket_dir(config.address)
    fd = os.open(_start_lock_path(config.address),
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ServerUnavailable(
                        f"timed out after {timeout:g} s waiting for another process to start "
                        f"the task server at {describe(config.address)}") from None
                time.sleep(0.01)
        if _alive(config):
            return
        # Every SCHEDULE task must import before a server starts to enqueue it (ScheduleError).
        popen = _spawn(resolve_config(config))
        while time.monotonic() < deadline:
            exited = popen.poll() is not None  # read before the ping: no race with a late start
            if _alive(config):
                return
            if exited:
                if popen.returncode == 0:  # it found another server holding the lock
                    raise ServerUnavailable(
                        f"a task server holds {describe(config.address)} but does not answer "
                        f"(stalled or overloaded?); check its process, or remove it")
                raise ServerUnavailable(
                    f"the task server for {describe(config.address)} exited at start "
                    f"(code {popen.returncode}); see its output above"
                    + ("" if config.embedded else f" or in {_log_path(config)}"))
            time.sleep(0.02)
        raise ServerUnavailable(
            f"started a task server at {describe(config.address)} but it did not answer "
            f"within {timeout:g} s")
    finally:
        os.close(fd)  # releases the flock


def _log_path(config):
    return side_file(config.address, ".log")


def _spawn(config):
    spec = {"config": config.to_spec(), "owner_pid": os.getpid() if config.embedded else None,
            "grace": 0.0 if config.embedded else 30.0}
    if config.embedded:
        out = None  # inherit: worker tracebacks show in runserver's console
    else:
        out = open_log(_log_path(config))  # never through a symlink planted there
    try:
        popen = start_python(SERVER_CMD, out=out)
    finally:
        if out is not None:
            out.close()
    send_spec(popen, spec)
    if config.embedded:
        old = _owned.get(config.address)
        if old is not None and old[1] == os.getpid():
            old[0].poll()  # reap the previous one if it died
        _owned[config.address] = (popen, os.getpid())
    return popen


def owned_servers():
    """The embedded servers this process started (Popen objects), alive or not."""
    return [popen for popen, owner in _owned.values() if owner == os.getpid()]


@atexit.register
def _stop_owned():
    """At our clean exit, stop the embedded servers we own (they would notice within 0.5 s)."""
    for popen, owner in _owned.values():
        if owner == os.getpid() and popen.poll() is None:
            try:
                popen.terminate()
                popen.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
