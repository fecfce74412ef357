"""Prefetch with real processes (issue 16): a real `tasks_server`, real worker processes taking
batches, each promise checked against a ledger of what ran (testproject/prefetch_tasks.py).
The store-level tests with every interleaving: tests/test_prefetch_store.py.

enqueue_many puts a whole list in the queue in one turn, so the worker's parked claim sees
them all at once and takes a batch: the first task runs, the others are reserved behind it.
"""

import os
import signal
import time

import psutil
import pytest
from django.tasks import TaskResultStatus

from django_tasks_shared import cancel, enqueue_many, wait, wait_all
from helpers import ServerProcess, running_server, temp_dir, wait_until
from testproject import prefetch_tasks, tasks
from testproject.prefetch_tasks import mark, starts

WORKER_LOST = "django_tasks_shared.exceptions.WorkerLost"
TIME_LIMIT_EXCEEDED = "django_tasks_shared.exceptions.TimeLimitExceeded"
TASK_CANCELLED = "django_tasks_shared.exceptions.TaskCancelled"


def health(srv):
    return srv.client().call("health")


def marks(ledger, *specs):
    """enqueue_many of mark(ledger, tag, seconds) for each (tag, seconds)."""
    return enqueue_many(mark, [((ledger, tag, seconds), {}) for tag, seconds in specs])


def worker_pid(srv):
    return wait_until(lambda: [w["pid"] for w in health(srv)["workers"]
                               if w["ready_at"]], 15, message="a ready worker")[0]


@pytest.mark.timeout(60)
def test_reserved_tasks_stay_ready_then_run_once_each_from_their_real_start():
    ledger = os.path.join(temp_dir(), "ledger")
    with running_server({"WORKERS": 1, "PREFETCH": 4}) as srv, srv.settings():
        worker_pid(srv)
        results = marks(ledger, ("a", 0.6), ("b", 0.2), ("c", 0.0))
        wait_until(lambda: starts(ledger, "a"), 10, message="a started")
        # b and c are reserved by the busy worker: READY in every view
        snap = health(srv)
        assert snap["reserved"] == 2 and snap["workers"][0]["reserved"] == 2
        assert snap["pending"] == 2 and snap["queues"]["default"]["ready"] == 2
        b = tasks.add.get_backend().get_result(results[1].id)
        assert b.status == TaskResultStatus.READY and b.started_at is None
        wait_all(results, 20)
        assert [r.status for r in results] == [TaskResultStatus.SUCCESSFUL] * 3
        # each ran once; b's started_at is its real start, after a finished (not its claim)
        assert all(len(starts(ledger, tag)) == 1 for tag in "abc")
        assert results[1].started_at >= results[0].finished_at
        assert abs(results[1].started_at.timestamp() - starts(ledger, "b")[0][2]) < 0.1
        assert health(srv)["prefetch"]["reserved_total"] >= 2


@pytest.mark.timeout(60)
def test_time_limit_counts_from_a_reserved_tasks_real_start_and_stops_a_hung_one():
    ledger = os.path.join(temp_dir(), "ledger")
    with running_server({"WORKERS": 1, "TIME_LIMIT": 1.5}) as srv, srv.settings():
        worker_pid(srv)
        results = marks(ledger, ("a", 0.9), ("b", 0.9), ("c", 30.0))
        wait_all(results, 30)
        # b ran 0.9 s from its start, 1.8 s after the claim that reserved it: not over
        assert [r.status for r in results[:2]] == [TaskResultStatus.SUCCESSFUL] * 2
        c = results[2]
        assert c.status == TaskResultStatus.FAILED
        assert c.errors[-1].exception_class_path == TIME_LIMIT_EXCEEDED
        ran = c.finished_at.timestamp() - starts(ledger, "c")[0][2]
        assert 1.5 <= ran < 3.5, ran  # counted from its real start, enforced by the tick


@pytest.mark.timeout(60)
def test_an_early_outcome_is_not_held_back_by_a_long_task_behind_it():
    ledger = os.path.join(temp_dir(), "ledger")
    with running_server({"WORKERS": 1}) as srv, srv.settings():
        worker_pid(srv)
        results = marks(ledger, ("quick", 0.0), ("slow", 4.0))
        started = time.monotonic()
        quick = wait(results[0], 3)
        assert quick.status == TaskResultStatus.SUCCESSFUL
        assert time.monotonic() - started < 2.0  # not after the slow one
        results[1].refresh()
        assert results[1].status == TaskResultStatus.RUNNING


@pytest.mark.timeout(60)
def test_a_killed_workers_reserved_tasks_run_elsewhere_and_never_end_worker_lost():
    ledger = os.path.join(temp_dir(), "ledger")
    with running_server({"WORKERS": 1}) as srv, srv.settings():
        pid = worker_pid(srv)
        results = marks(ledger, ("a", 30.0), ("b", 0.0), ("c", 0.0))
        wait_until(lambda: starts(ledger, "a"), 10, message="a started")
        assert health(srv)["reserved"] == 2
        os.kill(pid, signal.SIGKILL)
        wait_all(results, 20)
        assert results[0].status == TaskResultStatus.FAILED
        assert results[0].errors[-1].exception_class_path == WORKER_LOST
        for result in results[1:]:  # back at their place, run by the replacement
            assert result.status == TaskResultStatus.SUCCESSFUL and result.errors == []
            assert result.worker_ids != [] and len(result.worker_ids) == 1
        assert all(len(starts(ledger, tag)) == 1 for tag in "bc")
        assert {starts(ledger, tag)[0][1] for tag in "bc"} != {pid}
        assert health(srv)["prefetch"]["given_back"] == 2


@pytest.mark.timeout(60)
def test_a_task_that_kills_its_worker_costs_the_tasks_before_it_nothing():
    """Their outcomes were held for the next claim, in the worker's start table: they end as
    they ran; the killer ends WorkerLost; what was reserved behind it runs elsewhere."""
    ledger = os.path.join(temp_dir(), "ledger")
    with running_server({"WORKERS": 1}) as srv, srv.settings():
        pid = worker_pid(srv)
        blocker = mark.enqueue(ledger, "blocker", 0.5)
        wait_until(lambda: starts(ledger, "blocker"), 10, message="the blocker started")
        before = [tasks.add.enqueue(1, 2), tasks.add.enqueue(3, 4)]
        killer = tasks.die.enqueue(7)
        after = mark.enqueue(ledger, "after", 0.0)
        wait_all([blocker, *before, killer, after], 20)
        assert [r.return_value for r in before] == [3, 7]  # one batch with the killer
        assert before[0].worker_ids == killer.worker_ids == [before[1].worker_ids[0]]
        assert killer.status == TaskResultStatus.FAILED
        assert killer.errors[-1].exception_class_path == WORKER_LOST
        assert "exited with code 7" in killer.errors[-1].traceback
        assert after.status == TaskResultStatus.SUCCESSFUL and after.errors == []
        assert starts(ledger, "after")[0][1] != pid
        assert health(srv)["counters"]["worker_lost"] == 1


@pytest.mark.timeout(60)
def test_a_cancelled_reservation_never_runs_and_its_worker_is_not_stopped():
    ledger = os.path.join(temp_dir(), "ledger")
    with running_server({"WORKERS": 1}) as srv, srv.settings():
        pid = worker_pid(srv)
        results = marks(ledger, ("a", 1.0), ("b", 0.0), ("c", 0.0))
        wait_until(lambda: starts(ledger, "a"), 10, message="a started")
        assert cancel(results[1]) is True
        wait_all(results, 20)
        assert results[1].status == TaskResultStatus.FAILED
        assert results[1].errors[-1].exception_class_path == TASK_CANCELLED
        assert [r.status for r in (results[0], results[2])] == [TaskResultStatus.SUCCESSFUL] * 2
        assert starts(ledger, "b") == []
        assert worker_pid(srv) == pid and health(srv)["counters"]["worker_restarts"] == 0


@pytest.mark.timeout(60)
def test_many_tasks_over_two_workers_each_run_exactly_once():
    ledger = os.path.join(temp_dir(), "ledger")
    with running_server({"WORKERS": 2, "MAX_RESULTS": 1000}) as srv, srv.settings():
        worker_pid(srv)
        results = marks(ledger, *[(f"t{i}", 0.0) for i in range(400)])
        wait_all(results, 60)
        assert [r.status for r in results] == [TaskResultStatus.SUCCESSFUL] * 400
        runs = prefetch_tasks.ledger(ledger)
        assert sorted(runs) == sorted(f"t{i}" for i in range(400))
        assert all([e[0] for e in entries] == ["start", "end"] for entries in runs.values())
        snap = health(srv)
        assert snap["prefetch"]["reserved_total"] > 0 and snap["reserved"] == 0
        assert snap["counters"]["succeeded"] == 400


@pytest.mark.timeout(60)
def test_without_prefetch_a_worker_claims_one_task_at_a_time_as_before():
    """PREFETCH=1 (or FSYNC="always"): no start table in the worker's spec, so the worker
    claims with report_and_claim, as under a server of 0.2 (and 0.1.0: test_mixed_versions)."""
    ledger = os.path.join(temp_dir(), "ledger")
    with running_server({"WORKERS": 1, "PREFETCH": 1}) as srv, srv.settings():
        worker_pid(srv)
        results = marks(ledger, *[(f"t{i}", 0.0) for i in range(30)])
        wait_all(results, 30)
        assert [r.status for r in results] == [TaskResultStatus.SUCCESSFUL] * 30
        assert health(srv)["prefetch"] == {"reserved": 0, "reserved_total": 0, "given_back": 0}


@pytest.mark.timeout(90)
def test_a_server_crash_with_reservations_loses_nothing_and_runs_nothing_twice():
    state_dir = os.path.join(temp_dir(), "state")
    ledger = os.path.join(temp_dir(), "ledger")
    options = {"WORKERS": 1, "STATE_DIR": state_dir}
    srv = ServerProcess(options=options)
    try:
        srv.wait_ready()
        with srv.settings():
            worker_pid(srv)
            results = marks(ledger, ("a", 0.0), ("b", 30.0), ("c", 0.0), ("d", 0.0))
            wait_until(lambda: starts(ledger, "b"), 10, message="b started")
            assert os.listdir(os.path.join(state_dir, "starts"))  # the worker's start table
            workers = [psutil.Process(w["pid"]) for w in health(srv)["workers"]]
            srv.popen.kill()  # a crash: b (reserved, started) runs, c and d wait reserved
            srv.popen.wait(10)
            _, alive = psutil.wait_procs(workers, timeout=5)
            for proc in alive:
                proc.kill()
            assert not alive, "workers outlived their server by more than 5 s"
        srv = ServerProcess(address=srv.address, options=options)
        srv.wait_ready()
        with srv.settings():
            wait_all(results, 30)
            by_tag = dict(zip("abcd", results, strict=True))
            assert by_tag["a"].status == TaskResultStatus.SUCCESSFUL
            b = by_tag["b"]  # it started: never run again
            assert b.status == TaskResultStatus.FAILED
            assert b.errors[-1].exception_class_path == WORKER_LOST
            assert "died while this task ran" in b.errors[-1].traceback
            for tag in "cd":  # never started: READY again, run once, no error
                assert by_tag[tag].status == TaskResultStatus.SUCCESSFUL
                assert by_tag[tag].errors == []
            assert [len(starts(ledger, tag)) for tag in "abcd"] == [1, 1, 1, 1]
            # the previous server's start tables were read and removed
            assert health(srv)["state"]["restored"]["interrupted"] == 1
    finally:
        srv.stop()
    assert not os.path.exists(os.path.join(state_dir, "starts"))
