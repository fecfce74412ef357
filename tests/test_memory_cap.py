"""MAX_TASK_MEMORY, proven with a real server, real workers and real allocations: a task that
allocates 50 MiB per 100 ms under a 200 MiB cap is killed before 400 MiB, its sibling task ends
WorkerLost, the worker is replaced (run with -s to see how far past the cap it got)."""

import os
import re

import psutil
import pytest
from django.tasks import TaskResultStatus

from django_tasks_shared import wait
from django_tasks_shared.client.options import ConfigError
from django_tasks_shared.exceptions import MemoryLimitExceeded, WorkerLost
from helpers import running_server, temp_dir, wait_until
from test_retries import build
from testproject import tasks


def ready_pids(srv):
    return {w["pid"] for w in srv.client().call("health")["workers"] if w["ready_at"]}


def allocated(path):
    with open(path) as f:
        lines = f.read().split()
    return int(lines[-1]) if lines else 0


@pytest.mark.timeout(60)
def test_task_over_max_task_memory_is_killed_before_twice_the_cap():
    path = os.path.join(temp_dir(), "allocated")
    with running_server({"WORKERS": 1, "THREADS": 2, "MAX_TASK_MEMORY": 200}) as srv, \
            srv.settings():
        (old_pid,) = wait_until(lambda: ready_pids(srv), 15, message="a ready worker")
        hog = tasks.grow.enqueue(50, 0.1, 40, path)  # 50 MiB per 100 ms, up to 2 GiB
        wait_until(lambda: os.path.exists(path), 15, message="the allocation to start")
        sibling = tasks.sleep.enqueue(30)  # the worker's second thread
        wait(hog, timeout=20)
        assert hog.status == TaskResultStatus.FAILED
        error = hog.errors[0]
        assert error.exception_class is MemoryLimitExceeded
        seen = float(re.search(r"reached an RSS of ([\d.]+) MiB", error.traceback).group(1))
        assert "over MAX_TASK_MEMORY=200 MiB" in error.traceback
        print(f"\nkilled at an RSS of {seen} MiB (cap 200 MiB); the task had allocated "
              f"{allocated(path)} MiB")
        assert 200 < seen < 400 and allocated(path) < 400
        wait(sibling, timeout=20)
        assert sibling.status == TaskResultStatus.FAILED
        assert sibling.errors[0].exception_class is WorkerLost
        new = wait_until(lambda: ready_pids(srv) - {old_pid}, 15, message="a new worker")
        assert old_pid not in new
        counters = srv.client().call("health")["counters"]
        assert counters["memory_exceeded"] == 1 and counters["worker_lost"] == 1
        # the replacement works
        assert wait(tasks.add.enqueue(2, 3), timeout=15).return_value == 5
    print(*[line for line in srv.output().splitlines() if "after its RSS sample" in line])


@pytest.mark.timeout(60)
def test_a_fast_allocator_is_killed_too():
    """No pause between 50 MiB steps: how far past the cap one sampling interval lets it get."""
    path = os.path.join(temp_dir(), "allocated")
    with running_server({"WORKERS": 1, "MAX_TASK_MEMORY": 200}) as srv, srv.settings():
        hog = tasks.grow.enqueue(50, 0.0, 40, path)
        wait(hog, timeout=20)
        assert hog.errors[-1].exception_class is MemoryLimitExceeded
        seen = float(re.search(r"reached an RSS of ([\d.]+) MiB",
                               hog.errors[-1].traceback).group(1))
        print(f"\nfast allocator killed at an RSS of {seen} MiB (cap 200 MiB); it had allocated "
              f"{allocated(path)} MiB")
        assert seen > 200 and allocated(path) < 2000


@pytest.mark.timeout(60)
def test_memory_of_the_tasks_child_processes_counts_and_they_die_with_the_worker():
    path = os.path.join(temp_dir(), "child.pid")
    with running_server({"WORKERS": 1, "MAX_TASK_MEMORY": 150}) as srv, srv.settings():
        result = tasks.grow_in_child.enqueue(250, path)
        wait(result, timeout=20)
        assert result.status == TaskResultStatus.FAILED
        assert result.errors[0].exception_class is MemoryLimitExceeded
        assert "(with its children), over MAX_TASK_MEMORY=150 MiB" in result.errors[0].traceback
        with open(path) as f:
            child = int(f.read())
        # the child was in the worker's process group: SIGKILLed with it (a zombie at most,
        # until init reaps it)
        def gone():
            try:
                return psutil.Process(child).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True
        wait_until(gone, 5, message=f"the task's child process {child} to die")


@pytest.mark.timeout(60)
def test_a_cap_below_a_fresh_worker_is_reported_and_kills_nothing_idle():
    with running_server({"WORKERS": 1, "MAX_TASK_MEMORY": 10}) as srv:
        def warned():
            sup = srv.client().call("health")["server"]["supervisor"]
            return sup.get("memory_warning")
        text = wait_until(warned, 15, message="the memory warning")
        assert "MAX_TASK_MEMORY=10 MiB is below the RSS of a fresh worker" in text
        assert srv.client().call("health")["counters"]["worker_restarts"] == 0


@pytest.mark.parametrize("value", [0, "200", 1.5, True])
def test_bad_max_task_memory_is_a_clear_error(value):
    with pytest.raises(ConfigError, match="OPTIONS\\['MAX_TASK_MEMORY'\\] must be a whole number"):
        build({"MAX_TASK_MEMORY": value})
