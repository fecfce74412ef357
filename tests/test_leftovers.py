"""A task's child process that ignores SIGTERM does not outlive TIME_LIMIT, cancel or
MAX_TASK_MEMORY (issue 15): the worker dies of the SIGTERM at once, and the supervisor still
SIGKILLs what is left of its session after the grace (supervision/leftovers.py). Real server,
real workers, real children; each child is checked by its pid (and create time), and stopped by
the test if it is still there."""

import contextlib
import os
import time

import psutil
import pytest
from django.tasks import TaskResultStatus

from django_tasks_shared import cancel, wait
from django_tasks_shared.exceptions import MemoryLimitExceeded, TaskCancelled, TimeLimitExceeded
from helpers import running_server, temp_dir, wait_until
from testproject import stall_tasks


def child_of(path):
    """psutil.Process of the child whose pid the task wrote to `path`."""
    pid = wait_until(lambda: os.path.exists(path) and open(path).read().strip(), 20,
                     message="the task's child to start")
    return psutil.Process(int(pid))


def gone(proc):
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


@contextlib.contextmanager
def stopped_by_pid(procs):
    """Whatever the test's outcome, the children it made are SIGKILLed by pid (create time
    checked by psutil) if still there."""
    try:
        yield
    finally:
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()


@pytest.mark.timeout(60)
def test_time_limit_kills_a_child_that_ignores_sigterm():
    path = os.path.join(temp_dir(), "child.pid")
    procs = []
    with running_server({"WORKERS": 1, "TIME_LIMIT": 1.5}) as srv, srv.settings(), \
            stopped_by_pid(procs):
        result = stall_tasks.stubborn_child.enqueue(path)
        child = child_of(path)
        procs.append(child)
        wait(result, 20)
        assert result.errors[0].exception_class is TimeLimitExceeded
        killed_at = time.monotonic()
        # the worker's SIGTERM reached the child too (its process group), which ignored it;
        # the SIGKILL comes at the end of the grace (KILL_GRACE, 1 s)
        wait_until(lambda: gone(child), 10, message=f"child {child.pid} to be killed")
        print(f"\nchild gone {time.monotonic() - killed_at:.2f} s after the task failed")
    assert "SIGKILLed 1 process(es) left by worker" in srv.output()


@pytest.mark.timeout(60)
def test_cancel_kills_a_child_in_a_process_group_of_its_own():
    """The child left the worker's process group (setpgid): the session still finds it."""
    path = os.path.join(temp_dir(), "child.pid")
    procs = []
    with running_server({"WORKERS": 1}) as srv, srv.settings(), stopped_by_pid(procs):
        result = stall_tasks.stubborn_child.enqueue(path, True)
        child = child_of(path)
        procs.append(child)
        assert os.getpgid(child.pid) == child.pid  # its own group
        wait_until(lambda: srv.client().call("get", result.id)["status"] == "RUNNING", 10)
        assert cancel(result)
        assert result.status == TaskResultStatus.FAILED
        assert result.errors[0].exception_class is TaskCancelled
        wait_until(lambda: gone(child), 10, message=f"child {child.pid} to be killed")


@pytest.mark.timeout(60)
def test_max_task_memory_kills_a_child_outside_the_group_with_the_worker():
    """MAX_TASK_MEMORY SIGKILLs the worker's group at once; a child in a group of its own is
    not in it, and is SIGKILLed when the worker is reaped."""
    path = os.path.join(temp_dir(), "child.pid")
    procs = []
    with running_server({"WORKERS": 1, "MAX_TASK_MEMORY": 150}) as srv, srv.settings(), \
            stopped_by_pid(procs):
        result = stall_tasks.stubborn_child.enqueue(path, True, 400)
        child = child_of(path)
        procs.append(child)
        wait(result, 20)
        assert result.errors[0].exception_class is MemoryLimitExceeded
        wait_until(lambda: gone(child), 10, message=f"child {child.pid} to be killed")
