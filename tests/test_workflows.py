"""Workflows with real processes: a real `tasks_server`, its workers, several client processes,
real signals. Unique keys enqueued at once from four processes, limits while workers are
SIGKILLed, a dependency whose parent is cancelled, pools whose worker is killed, and all of it
through a SIGKILL of the server with a STATE_DIR. The rules themselves (and a property test of
the claims against a naive model) are in tests/test_workflows_store.py."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from django.tasks.exceptions import TaskResultDoesNotExist

from django_tasks_shared import after, cancel, wait, wait_all
from helpers import MANAGE, ServerProcess, child_env, running_server, temp_dir, wait_until
from test_durability import kill_server_and_orphans
from testproject import flow_tasks, tasks

WORKER_LOST = "django_tasks_shared.exceptions.WorkerLost"
DEPENDENCY_FAILED = "django_tasks_shared.exceptions.DependencyFailed"
TIME_LIMIT_EXCEEDED = "django_tasks_shared.exceptions.TimeLimitExceeded"

# Each client process sets Django up, says so, waits for the "go" file, then enqueues the same
# unique key 25 times.
CLIENT = r"""
import json, os, sys, time
import django
django.setup()
from testproject import flow_tasks
flow_tasks.unique_job.get_backend().call("ping")  # connected
ready, go = sys.argv[1], sys.argv[2]
open(ready, "w").close()
deadline = time.monotonic() + 30
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.001)
ids = [flow_tasks.unique_job.enqueue("k", 1.5).id for _ in range(25)]
print(json.dumps(ids))
"""

def health(srv):
    return srv.client().call("health")


def intervals(srv, results):
    """(started_at, finished_at) of each task, as the server recorded them: a task's run lies
    within (the server starts it before its worker runs it, and ends it after)."""
    client = srv.client()
    return [(r["started_at"], r["finished_at"]) for r in client.call("get_many",
                                                                       [x.id for x in results])
            if r["started_at"] is not None]


def most_at_once(spans):
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = peak = 0
    for _, delta in events:
        now += delta
        peak = max(peak, now)
    return peak


@pytest.mark.timeout(90)
def test_one_unique_key_enqueued_at_once_from_four_processes_stores_one_task():
    with running_server({"WORKERS": 1}) as srv:
        sync = temp_dir()
        go = os.path.join(sync, "go")
        clients = [subprocess.Popen([sys.executable, "-c", CLIENT, os.path.join(sync, str(i)),
                                     go], env=child_env(srv.address), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for i in range(4)]
        try:
            wait_until(lambda: len(os.listdir(sync)) == 4, 30, message="4 clients ready")
            open(go, "w").close()  # all at once
            outputs = [c.communicate(timeout=60) for c in clients]
        finally:
            for c in clients:
                if c.poll() is None:
                    c.kill()
        ids = {i for out, err in outputs for i in json.loads(out or "null") or [err]}
        assert len(ids) == 1, ids
        assert health(srv)["counters"]["enqueued"] == 1
        assert health(srv)["workflows"]["unique"]["keys"][0]["key"] == \
            "testproject.flow_tasks.unique_job:k"
        with srv.settings():
            holder = flow_tasks.unique_job.get_backend().get_result(ids.pop())
            assert flow_tasks.unique_job.enqueue("k").id == holder.id  # running: still the holder
            wait(holder, 20)
            fresh = flow_tasks.unique_job.enqueue("k")                # finished: free again
            assert fresh.id != holder.id
            other = flow_tasks.unique_job.enqueue("other")
            assert other.id not in (fresh.id, holder.id)
            # until="started": one may wait while another runs
            running = flow_tasks.unique_until_started.enqueue("x", 1.0)
            wait_until(lambda: srv.client().call("get", running.id)["status"] == "RUNNING", 15)
            waiting = flow_tasks.unique_until_started.enqueue("x", 1.0)
            assert waiting.id != running.id
            assert flow_tasks.unique_until_started.enqueue("x", 1.0).id == waiting.id
            wait_all([fresh, other, running, waiting], 30)


@pytest.mark.timeout(90)
def test_concurrency_limit_holds_while_workers_are_sigkilled_and_never_blocks_others():
    ledger = os.path.join(temp_dir(), "ledger")
    with running_server({"WORKERS": 4}) as srv, srv.settings():
        wait_until(lambda: sum(w["ready_at"] is not None for w in health(srv)["workers"]) == 4,
                   20, message="4 ready workers")
        limited = [flow_tasks.limited.enqueue(0.4, ledger) for _ in range(14)]
        plain = [tasks.add.enqueue(i, i) for i in range(10)]  # queued behind them
        wait_all(plain, 20)  # the two free workers take them at once
        assert all(r.status == "SUCCESSFUL" for r in plain)
        killed = 0
        for _ in range(2):   # SIGKILL a worker running a limited task, twice
            def victim():
                for worker in health(srv)["workers"]:
                    if worker["current_tasks"] and worker["current_tasks"][0]["name"] == \
                            "testproject.flow_tasks.limited":
                        return worker
                return None
            worker = wait_until(victim, 15, message="a worker running a limited task")
            try:
                os.kill(worker["pid"], signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
            time.sleep(0.3)
        wait_all(limited, 60)
        spans = intervals(srv, limited)
        assert most_at_once(spans) == 2  # reached, never passed (slots freed by WorkerLost too)
        lost = [r for r in limited if r.status == "FAILED"]
        assert all(r.errors[-1].exception_class_path == WORKER_LOST for r in lost)
        assert 1 <= len(lost) <= killed
        assert max(r.finished_at for r in plain) < max(r.finished_at for r in limited)
        assert health(srv)["workflows"]["limits"]["keys"] == 0  # nothing held any more


@pytest.mark.timeout(60)
def test_rate_limit_is_a_sliding_window_per_key():
    with running_server({"WORKERS": 2, "THREADS": 2}) as srv, srv.settings():
        shop_a = [flow_tasks.rated.enqueue("a") for _ in range(10)]
        shop_b = [flow_tasks.rated.enqueue("b") for _ in range(4)]
        started = time.monotonic()
        wait_all(shop_b, 20)
        assert time.monotonic() - started < 1.5  # another key: not behind shop a's window
        wait_all(shop_a, 30)
        starts = sorted(s for s, _ in intervals(srv, shop_a))
        for i, t in enumerate(starts):  # any 1 s window holds at most 4 starts
            assert sum(1 for u in starts[i:] if u < t + 1.0) <= 4, starts
        assert starts[-1] - starts[0] >= 2.0  # 10 starts at 4/s: at least 2 full windows


@pytest.mark.timeout(60)
def test_dependencies_run_after_their_parents_and_fail_when_one_is_cancelled():
    with running_server({"WORKERS": 2}) as srv, srv.settings():
        parts = [tasks.add.enqueue(i, 10) for i in range(4)]
        merged = after(parts, flow_tasks.merge, "report")                    # a group + callback
        chained = after([merged], tasks.add, 1, 2)                      # a chain
        assert merged.status == "READY"
        wait_all([*parts, merged, chained], 20)
        assert merged.return_value == {"label": "report",
                                       "parents": [[p.id, 10 + i] for i, p in enumerate(parts)]}
        assert chained.return_value == 3
        assert all(p.finished_at <= merged.started_at for p in parts)

        # a parent cancelled while pending (behind a blocker): its dependents never run
        blockers = [tasks.sleep.using(priority=10).enqueue(1.5) for _ in range(2)]
        parent = tasks.add.enqueue(1, 1)
        child = after(parent, tasks.add, 2, 2)
        grandchild = after([child], tasks.add, 3, 3)
        assert cancel(parent)
        for result in (child, grandchild):
            wait(result, 10)
            assert result.status == "FAILED" and result.worker_ids == []
            assert result.errors[-1].exception_class_path == DEPENDENCY_FAILED
        assert parent.id in child.errors[-1].traceback
        assert child.id in grandchild.errors[-1].traceback

        # a parent cancelled while RUNNING
        running = tasks.sleep.enqueue(5)
        waiting = after([running], tasks.add, 4, 4)
        wait_until(lambda: srv.client().call("get", running.id)["status"] == "RUNNING", 15)
        assert cancel(running)
        assert wait(waiting, 10).errors[-1].exception_class_path == DEPENDENCY_FAILED

        # an unknown parent: TaskResultDoesNotExist at the call, nothing stored
        before = health(srv)["counters"]["enqueued"]
        bogus = tasks.add.get_backend().get_result(parts[0].id)
        object.__setattr__(bogus, "id", "f" * 32)
        with pytest.raises(TaskResultDoesNotExist):
            after([parts[0], bogus], tasks.add, 5, 5)
        assert health(srv)["counters"]["enqueued"] == before
        wait_all(blockers, 10)


@pytest.mark.timeout(90)
def test_pools_serve_their_queues_with_their_limits_and_replace_a_killed_worker():
    pools = {"web": {"queues": ["default"], "workers": 1},
             "mail": {"queues": ["emails"], "workers": 1, "TIME_LIMIT": 1.5}}
    with running_server({"POOLS": pools}) as srv, srv.settings():
        def by_pool():
            out = {}
            for worker in health(srv)["workers"]:
                if worker["ready_at"] is not None:
                    out.setdefault(worker["pool"], []).append(worker["pid"])
            return out
        pids = wait_until(lambda: len(by_pool()) == 2 and by_pool(), 20, message="both pools")
        busy = tasks.sleep.enqueue(2.5)              # the web pool's only worker: 2.5 s
        mail = flow_tasks.slow_email.enqueue(0.1)         # not behind it: the mail pool runs it
        assert wait(mail, 10).return_value == pids["mail"][0]
        assert srv.client().call("get", busy.id)["status"] == "RUNNING"
        slow_mail = flow_tasks.slow_email.enqueue(5)      # over the mail pool's TIME_LIMIT
        assert wait(slow_mail, 15).errors[-1].exception_class_path == TIME_LIMIT_EXCEEDED
        assert wait(busy, 10).status == "SUCCESSFUL"  # the web pool has no TIME_LIMIT
        doc = health(srv)
        assert {p["name"]: (p["queues"], p["workers_expected"], p["time_limit"])
                for p in doc["server"]["supervisor"]["pools"]} == {
            "web": (["default"], 1, None), "mail": (["emails"], 1, 1.5)}
        # kill the mail worker mid-task: WorkerLost, and a new worker of the mail pool
        victim = flow_tasks.slow_email.enqueue(1.0)
        wait_until(lambda: srv.client().call("get", victim.id)["status"] == "RUNNING", 15)
        mail_pid = by_pool()["mail"][0]
        os.kill(mail_pid, signal.SIGKILL)
        assert wait(victim, 10).errors[-1].exception_class_path == WORKER_LOST
        wait_until(lambda: by_pool().get("mail") and by_pool()["mail"] != [mail_pid], 15,
                   message="a new mail worker")
        assert len(by_pool()["web"]) == 1
        assert wait(flow_tasks.slow_email.enqueue(0), 10).return_value == by_pool()["mail"][0]
        text = subprocess.run([sys.executable, MANAGE, "tasks_health"],
                              env=child_env(srv.address), capture_output=True, text=True,
                              timeout=30).stdout
        assert "pool      mail: emails  1 of 1 worker(s) x 1 thread(s)  TIME_LIMIT 1.5 s" in text
        # tasks_reload replaces every pool's workers: generation 2 in both
        done = subprocess.run([sys.executable, MANAGE, "tasks_reload", "--wait"],
                              env=child_env(srv.address), capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        workers = wait_until(lambda: [w for w in health(srv)["workers"] if w["generation"] == 2]
                             if len(health(srv)["workers"]) == 2 else None, 20,
                             message="the old generation gone")
        assert sorted(w["pool"] for w in workers) == ["mail", "web"]


@pytest.mark.timeout(120)
def test_workflows_survive_a_server_sigkill_with_state_dir():
    state_dir = os.path.join(temp_dir(), "state")
    ledger = os.path.join(temp_dir(), "ledger")
    options = {"WORKERS": 1, "STATE_DIR": state_dir}
    srv = ServerProcess(options=options)
    try:
        srv.wait_ready()
        with srv.settings():
            blocker = tasks.sleep.using(priority=10).enqueue(60)
            wait_until(lambda: srv.client().call("get", blocker.id)["status"] == "RUNNING", 15)
            parent = tasks.add.enqueue(20, 22)
            child = after([parent], flow_tasks.merge, "after restart")
            holder = flow_tasks.unique_job.enqueue("durable", 3.0)  # held until it finishes
            limited = [flow_tasks.limited.enqueue(0.3, ledger) for _ in range(6)]
        # each enqueue was journaled before its reply: a SIGKILL keeps it (page cache)
        kill_server_and_orphans(srv)
    finally:
        srv.stop()
    again = ServerProcess(address=srv.address, options={**options, "WORKERS": 3})
    try:
        again.wait_ready()
        with again.settings():
            assert flow_tasks.unique_job.enqueue("durable").id == holder.id  # the key held still
            wait_all([child, holder, *limited], 30)
            blocker.refresh()
        assert blocker.errors[-1].exception_class_path == WORKER_LOST
        assert child.status == "SUCCESSFUL"
        assert child.return_value["parents"] == [[parent.id, 42]]
        assert most_at_once(intervals(again, limited)) <= 2
        assert all(r.status == "SUCCESSFUL" for r in limited)
    finally:
        again.stop()


@pytest.mark.timeout(60)
def test_a_schedule_without_overlap_skips_slots_while_its_run_is_going():
    ledger = os.path.join(temp_dir(), "ledger")
    schedule = {"slow": {"task": "testproject.flow_tasks.unique_job", "every": 0.5,
                         "args": ["beat", 1.6, ledger], "overlap": False}}
    with running_server({"WORKERS": 2, "SCHEDULE": schedule}) as srv:
        wait_until(lambda: os.path.exists(ledger) and
                   open(ledger).read().count("end") >= 2, 20, message="two runs")
        doc = health(srv)
        item = doc["schedules"][0]
        assert item["overlap"] is False and item["skipped"] >= 3
    with open(ledger) as f:
        rows = [line.split() for line in f]
    spans, opened = [], {}
    for kind, when, task_id in rows:
        if kind == "start":
            opened[task_id] = float(when)
        else:
            spans.append((opened.pop(task_id), float(when)))
    assert most_at_once(spans) == 1


def test_a_queue_no_pool_serves_is_a_system_check_error():
    env = child_env(options={"POOLS": {"web": {"queues": ["default"], "workers": 1}}})
    done = subprocess.run([sys.executable, MANAGE, "check"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "django_tasks_shared.E002" in done.stderr and "'emails'" in done.stderr

