import contextlib
import shutil

import psutil
import pytest

from helpers import CREATED_DIRS, ServerProcess


@pytest.fixture(autouse=True, scope="session")
def remove_socket_directories():
    yield
    for directory in CREATED_DIRS:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Every process a test starts is stopped by pid, also when the test fails."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    leftovers = [p for p in me.children(recursive=True) if p.pid not in before]
    for proc in leftovers:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(leftovers, timeout=5)


@pytest.fixture
def server(request):
    """A running `tasks_server` (2 workers) on a private socket; options via indirect param."""
    options = getattr(request, "param", None) or {"WORKERS": 2}
    srv = ServerProcess(options=options)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
