"""A real `tasks_server` stalled with SIGSTOP for longer than CONNECT_TIMEOUT, then SIGCONT
(issue 15): an enqueue made during the stall succeeds after it, or fails naming the task id
that may be queued; nothing is lost or run twice (a ledger: one line per run); workers do not
exit (same pids, no WorkerLost); tasks that finish during the stall end SUCCESSFUL.

CONNECT_TIMEOUT is 1 s here, so an idempotent call keeps trying for 3 s (STALL_PATIENCE).
"""

import collections
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.tasks import TaskResultStatus

from django_tasks_shared import wait, wait_all
from django_tasks_shared.client.connection import STALL_PATIENCE
from django_tasks_shared.exceptions import ServerStalled
from helpers import ServerProcess, temp_dir, wait_until
from testproject import stall_tasks

CONNECT_TIMEOUT = 1.0


class Stall:
    """SIGSTOP the server now and SIGCONT it after `seconds` (also when the test fails)."""

    def __init__(self, pid, seconds):
        self.pid = pid
        self.timer = threading.Timer(seconds, self.resume)
        self.resumed = threading.Event()
        os.kill(pid, signal.SIGSTOP)
        self.started = time.monotonic()
        self.timer.start()

    def resume(self):
        if not self.resumed.is_set():
            os.kill(self.pid, signal.SIGCONT)
            self.resumed.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        self.resume()


def ledger(path):
    """result id -> how many times it ran."""
    if not os.path.exists(path):
        return collections.Counter()
    with open(path) as f:
        return collections.Counter(line.split()[0] for line in f if line.strip())


def facts(srv):
    health = srv.client().call("health")
    return sorted(w["pid"] for w in health["workers"]), health["counters"], health["running"]


@pytest.mark.timeout(90)
def test_enqueues_and_reports_during_a_stall_within_the_bound_succeed_once():
    srv = ServerProcess(options={"WORKERS": 2, "THREADS": 2, "CONNECT_TIMEOUT": CONNECT_TIMEOUT})
    path = os.path.join(temp_dir(), "ledger")
    try:
        srv.wait_ready()
        with srv.settings():
            wait_until(lambda: len(facts(srv)[0]) == 2, 20, message="two workers")
            pids, _, _ = facts(srv)
            # 4 threads busy for 1 s, 4 tasks waiting behind them; the stall begins as soon as
            # the 4 run, so they finish about 1 s into it: their reports get no answer within
            # CONNECT_TIMEOUT (1 s) before it ends (2.5 s), and are resent
            running = [stall_tasks.ledger_after.enqueue(path, 1.0) for _ in range(4)]
            queued = [stall_tasks.ledger_after.enqueue(path, 0.05) for _ in range(4)]
            wait_until(lambda: facts(srv)[2] == 4, 20, message="4 tasks running")
            stall_for = 2.5 * CONNECT_TIMEOUT  # within 3 x CONNECT_TIMEOUT
            with Stall(srv.popen.pid, stall_for) as stall:
                # the running tasks finish during the stall: their reports get no answer
                def enqueue(_):
                    result = stall_tasks.ledger_after.enqueue(path, 0.05)
                    return result, time.monotonic() - stall.started

                with ThreadPoolExecutor(4) as pool:
                    during = list(pool.map(enqueue, range(4)))
            print(f"\n[measure] {stall_for:g} s stall, CONNECT_TIMEOUT {CONNECT_TIMEOUT:g} s: "
                  f"enqueues during it returned after "
                  f"{', '.join(f'{e:.2f}' for _, e in during)} s")
            for _, elapsed in during:  # each one waited out the stall, then succeeded
                assert stall_for - 0.3 < elapsed < STALL_PATIENCE * CONNECT_TIMEOUT + 1, elapsed
            results = running + queued + [result for result, _ in during]
            wait_all(results, 30)
            assert [r.status for r in results] == [TaskResultStatus.SUCCESSFUL] * 12
            wait_until(lambda: sum(ledger(path).values()) == 12, 10, message="12 ledger lines")
            assert ledger(path) == collections.Counter({r.id: 1 for r in results})
            after, counters, _ = facts(srv)
            assert after == pids  # no worker exited
            assert counters["worker_lost"] == 0 and counters["worker_restarts"] == 0, counters
            assert counters["enqueued"] == 12 and counters["succeeded"] == 12, counters
    finally:
        srv.stop()
    output = srv.popen.stdout.read()
    assert "sending the report again until it answers" in output  # the reports were resent
    assert "answered after" in output


@pytest.mark.timeout(90)
def test_an_enqueue_during_a_longer_stall_fails_with_the_task_id_and_runs_once():
    # TIME_LIMIT 4 s < the 5 s stall: the tasks running when it began look overdue when it
    # ends; their reports (resent by the workers) must win over the time limit.
    srv = ServerProcess(options={"WORKERS": 2, "CONNECT_TIMEOUT": CONNECT_TIMEOUT,
                                 "TIME_LIMIT": 4})
    path = os.path.join(temp_dir(), "ledger")
    try:
        srv.wait_ready()
        with srv.settings():
            wait_until(lambda: len(facts(srv)[0]) == 2, 20, message="two workers")
            pids, _, _ = facts(srv)
            running = [stall_tasks.ledger_after.enqueue(path, 2.0) for _ in range(2)]
            wait_until(lambda: facts(srv)[2] == 2, 20, message="2 tasks running")
            with Stall(srv.popen.pid, 5.0) as stall:
                with pytest.raises(ServerStalled) as caught:
                    stall_tasks.ledger_after.enqueue(path, 0.05)
                elapsed = time.monotonic() - stall.started
                assert not stall.resumed.is_set()
            bound = STALL_PATIENCE * CONNECT_TIMEOUT
            print(f"\n[measure] 5 s stall, CONNECT_TIMEOUT {CONNECT_TIMEOUT:g} s: the enqueue "
                  f"raised ServerStalled after {elapsed:.2f} s")
            assert bound - 0.5 < elapsed < bound + 1.0, elapsed
            exc = caught.value
            text = str(exc)
            assert exc.task_id and exc.maybe_applied
            assert f"Task {exc.task_id} (testproject.stall_tasks.ledger_after) may have been " \
                   f"queued" in text
            assert f"get_result('{exc.task_id}')" in text
            assert "stalled" in text and srv.address in text
            assert "Start it with" not in text and "tasks_server" not in text

            # The request had reached the server: after the stall the task is there, once.
            late = stall_tasks.ledger_after.get_result(exc.task_id)
            assert wait(late, 20).status == TaskResultStatus.SUCCESSFUL
            wait_all(running, 20)
            assert [r.status for r in running] == [TaskResultStatus.SUCCESSFUL] * 2
            wait_until(lambda: sum(ledger(path).values()) == 3, 10, message="3 ledger lines")
            assert ledger(path) == collections.Counter(
                {r.id: 1 for r in running} | {exc.task_id: 1})
            after, counters, _ = facts(srv)
            assert after == pids
            assert counters["worker_lost"] == 0 and counters["timed_out"] == 0, counters
            assert counters["enqueued"] == 3 and counters["succeeded"] == 3, counters
    finally:
        srv.stop()
    assert "TIME_LIMIT waits" in srv.popen.stdout.read()


@pytest.mark.timeout(60)
def test_a_repeated_claim_and_a_repeated_report_through_a_real_server():
    """The test process speaks for the server's one worker (its id) on a thread number the
    worker does not use, while the worker itself is busy: report_and_claim over the wire."""
    srv = ServerProcess(options={"WORKERS": 1, "CONNECT_TIMEOUT": CONNECT_TIMEOUT})
    path = os.path.join(temp_dir(), "ledger")
    try:
        srv.wait_ready()
        with srv.settings():
            busy = stall_tasks.ledger_after.enqueue(path, 4.0)
            wait_until(lambda: facts(srv)[2] == 1, 20, message="the worker busy")
            client = srv.client()
            worker_id = client.call("health")["workers"][0]["id"]
            task = stall_tasks.ledger_after.enqueue(path, 0.0)
            first = client.call("report_and_claim", worker_id, None, 0.5, 7, 0)
            assert first["id"] == task.id and first["status"] == "RUNNING"
            # the reply was "lost": the same claim again gets the same task, not another
            other = stall_tasks.ledger_after.enqueue(path, 0.0)
            again = client.call("report_and_claim", worker_id, None, 0.5, 7, 0)
            assert again["id"] == task.id and again["worker_ids"] == first["worker_ids"]
            assert client.call("get", other.id)["status"] == "READY"

            outcome = {"id": task.id, "status": "SUCCESSFUL", "finished_at": time.time(),
                       "return_value": "first", "attempt": 1}
            nxt = client.call("report_and_claim", worker_id, outcome, 0.5, 7, 1)
            assert nxt["id"] == other.id
            # that reply "lost" too: report and claim again; the report counts once
            resent = dict(outcome, return_value="second", finished_at=time.time() + 1)
            assert client.call("report_and_claim", worker_id, resent, 0.5, 7, 1)["id"] == \
                other.id
            record = client.call("get", task.id)
            assert record["status"] == "SUCCESSFUL" and record["return_value"] == "first"
            done = {"id": other.id, "status": "SUCCESSFUL", "finished_at": time.time(),
                    "attempt": 1}
            assert client.call("report_and_claim", worker_id, done, 0.3, 7, 2) is None
            assert wait(busy, 20).status == TaskResultStatus.SUCCESSFUL
            counters = client.call("health")["counters"]
            assert counters["succeeded"] == 3 and counters["worker_lost"] == 0, counters
            client.close()
    finally:
        srv.stop()
