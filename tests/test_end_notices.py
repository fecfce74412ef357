"""task_finished for the tasks the SERVER ends (store/notices.py, worker/notices.py): one notice
per server end, delivered by a worker with the final FAILED TaskResult, leased so that a worker
dying mid-delivery does not lose it, journaled so that a server crash does not either.

The store-level tests use no IPC; the last ones run a real server, real workers and a real
signal receiver (tests/testproject/tasks.py appends every signal to $TASKS_SIGNAL_LOG)."""

import os
import time
from datetime import timedelta

import pytest
from django.tasks import default_task_backend
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_tasks_shared import cancel, wait
from django_tasks_shared.protocol.records import new_record
from django_tasks_shared.protocol.status import STOP
from django_tasks_shared.store import TaskStore, notices
from helpers import ServerProcess, running_server, temp_dir, wait_until
from test_durability import kill_server_and_orphans
from test_state_files import crash, open_store
from testproject import tasks

WORKER_LOST = "django_tasks_shared.exceptions.WorkerLost"
TIME_LIMIT = "django_tasks_shared.exceptions.TimeLimitExceeded"
CANCELLED = "django_tasks_shared.exceptions.TaskCancelled"
MEMORY = "django_tasks_shared.exceptions.MemoryLimitExceeded"


def rec(task_id, retry=None, run_after=None):
    return new_record(id=task_id, task="testproject.tasks.add", args=[1, 2], kwargs={},
                      retry=retry, run_after=run_after)


def start(store, worker_id, task_id):
    record = store.polls.finish_and_claim(worker_id, None, 0)
    assert record["id"] == task_id
    return record


def ids(records):
    return sorted(r["id"] for r in records)


# ---- the store -----------------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_each_server_end_leaves_one_notice_and_a_worker_end_none():
    store = TaskStore()
    for worker_id in ("w1", "w2", "w3"):
        store.register_worker(worker_id, pid=1)
    store.enqueue(rec("ok"))
    start(store, "w1", "ok")
    store.polls.finish_and_claim("w1", {"id": "ok", "status": "SUCCESSFUL",
                                        "finished_at": time.time()}, 0)
    store.enqueue(rec("lost"))
    start(store, "w1", "lost")
    store.worker_exited("w1", WORKER_LOST, "WorkerLost: killed\n")
    store.enqueue(rec("limit"))
    start(store, "w2", "limit")
    store.fail_task("limit", TIME_LIMIT, "TimeLimitExceeded: ran 2 s\n")
    store.enqueue(rec("running"))
    start(store, "w3", "running")
    assert store.cancels.cancel("running")
    store.enqueue(rec("pending", run_after=time.time() + 3600))
    assert store.cancels.cancel("pending")
    # retried by its policy (WorkerLost named in `on`): not the end, no notice yet
    policy = {"max_attempts": 2, "delay": 0.0, "factor": 1.0, "max_delay": 0.0,
              "on": [WORKER_LOST]}
    store.register_worker("w4", pid=1)
    store.enqueue(rec("again", retry=policy))
    start(store, "w4", "again")
    store.worker_exited("w4", WORKER_LOST, "WorkerLost: killed\n")
    assert store.records["again"]["status"] == "READY"
    assert store.health()["notices"]["pending"] == 4

    store.register_worker("d1", pid=1)
    got = store.notices.take("d1", [], 100)
    assert ids(got) == ["limit", "lost", "pending", "running"]
    by_id = {r["id"]: r for r in got}
    assert by_id["lost"]["errors"][-1]["exception_class_path"] == WORKER_LOST
    assert by_id["limit"]["errors"][-1]["exception_class_path"] == TIME_LIMIT
    assert by_id["pending"]["errors"][-1]["exception_class_path"] == CANCELLED
    assert all(r["status"] == "FAILED" and r["finished_at"] for r in got)
    # its final attempt ends by the server too: now it has a notice
    store.register_worker("w5", pid=1)
    start(store, "w5", "again")
    store.worker_exited("w5", WORKER_LOST, "WorkerLost: killed again\n")
    assert store.records["again"]["status"] == "FAILED"
    assert ids(store.notices.take("d1", ids(got), 100)) == ["again"]
    assert store.notices.take("d1", ["again"], 100) == []
    assert store.health()["notices"] == {"pending": 0, "leased": 0, "delivered": 5,
                                         "dropped": 0}


@pytest.mark.timeout(10)
def test_a_lease_keeps_others_off_until_its_worker_exits_or_it_expires():
    clock = [1_000.0]
    store = TaskStore(clock=lambda: clock[0])
    for worker_id in ("w", "a", "b"):
        store.register_worker(worker_id, pid=1)
    store.enqueue(rec("t", run_after=clock[0] + 3600))
    store.cancels.cancel("t")
    assert ids(store.notices.take("a", [], 10)) == ["t"]
    assert store.notices.take("b", [], 10) == []              # leased to a
    assert ids(store.notices.take("a", [], 10)) == ["t"]      # a's reply was lost: again to a
    assert store.notices.take("stranger", [], 10) == []       # unknown worker: nothing leased
    store.worker_exited("a", WORKER_LOST, "")                 # a died mid-delivery
    assert ids(store.notices.take("b", [], 10)) == ["t"]
    clock[0] += notices.LEASE + 1                             # b hangs past the lease
    store.register_worker("c", pid=1)
    assert ids(store.notices.take("c", [], 10)) == ["t"]
    assert store.notices.take("b", ["t"], 10) == []           # whoever acks first deletes it
    assert store.notices.take("c", ["t"], 10) == []
    assert store.health()["notices"]["pending"] == 0


@pytest.mark.timeout(10)
def test_past_max_notices_the_oldest_is_dropped_and_counted(monkeypatch):
    monkeypatch.setattr(notices, "MAX_NOTICES", 3)
    store = TaskStore()
    store.register_worker("w", pid=1)
    for i in range(5):
        store.enqueue(rec(f"t{i}", run_after=time.time() + 3600))
        store.cancels.cancel(f"t{i}")
    assert store.health()["notices"]["dropped"] == 2
    assert ids(store.notices.take("w", [], 10)) == ["t2", "t3", "t4"]
    assert not [k for k in store.durable if k in ("notice:t0", "notice:t1")]


@pytest.mark.timeout(30)
def test_notices_survive_a_crash_until_acknowledged_and_a_task_running_at_the_crash_gets_one():
    directory = temp_dir()
    store, state = open_store(directory)
    store.enqueue(rec("cancelled", run_after=time.time() + 3600))
    store.cancels.cancel("cancelled")
    store.enqueue(rec("running"))
    start(store, "w", "running")
    store.commit()
    assert ids(store.notices.take("w", [], 10)) == ["cancelled"]  # leased, never acknowledged
    crash(state)

    store, state = open_store(directory)  # "running" ends WorkerLost at the restore
    got = store.notices.take("w", [], 10)
    assert ids(got) == ["cancelled", "running"]
    running = {r["id"]: r for r in got}["running"]
    assert running["errors"][-1]["exception_class_path"] == WORKER_LOST
    assert "died while this task ran" in running["errors"][-1]["traceback"]
    store.notices.take("w", ["cancelled"], 0)  # one acknowledged
    store.commit()
    crash(state)

    store, state = open_store(directory)
    assert ids(store.notices.take("w", [], 10)) == ["running"]
    state.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["enqueue", "start", "succeed", "lose", "cancel",
                                           "deliver", "die_delivering"]),
                          st.integers(0, 3)), max_size=40))
def test_every_server_end_is_delivered_once_whatever_deliverers_die(steps):
    """Property: whatever the interleaving of ends, deliveries and deliverers dying before they
    acknowledge, once the survivors have drained the notices, every task the server ended was
    delivered (and acknowledged) exactly once; a notice a deliverer died holding may also have
    gone out from it (the one duplicate window); a task a worker finished has no notice."""
    store = TaskStore()
    confirmed: dict[str, int] = {}   # delivered, then acknowledged
    maybe = set()                    # held by a deliverer that died before acknowledging
    worker_ends, server_ends = set(), set()
    next_id, generation = [0], [0]

    def deliverer(n):
        return f"d{n}-{generation[0]}"

    for n in range(4):
        store.register_worker(deliverer(n), pid=1)
    store.register_worker("runner", pid=1)
    store.register_worker("drainer", pid=1)

    def replace_runner():
        store.worker_exited("runner", WORKER_LOST, "")
        store.register_worker("runner", pid=1)

    def deliver(worker_id, limit):
        got = store.notices.take(worker_id, [], limit)
        for record in got:
            confirmed[record["id"]] = confirmed.get(record["id"], 0) + 1
        store.notices.take(worker_id, [r["id"] for r in got], 0)
        return got

    for op, n in steps:
        if op == "enqueue":
            store.enqueue(rec(f"t{next_id[0]}"))
            next_id[0] += 1
        elif op == "start" and not store.running:
            got = store.polls.finish_and_claim("runner", None, 0)
            assert got is None or got["status"] == "RUNNING"
        elif op == "succeed" and store.running:
            task_id = next(iter(store.running))
            store.retire_worker("runner", "test")
            assert store.polls.finish_and_claim(
                "runner", {"id": task_id, "status": "SUCCESSFUL", "finished_at": time.time()},
                0) == STOP
            replace_runner()
            worker_ends.add(task_id)
        elif op == "lose" and store.running:
            server_ends.update(store.running)
            replace_runner()
        elif op == "cancel" and next_id[0]:
            task_id = f"t{n % next_id[0]}"
            if store.cancels.cancel(task_id):
                server_ends.add(task_id)
                if store.workers["runner"]["retiring"]:  # the supervisor stops its worker
                    replace_runner()
        elif op == "deliver":
            deliver(deliverer(n), 2)
        elif op == "die_delivering":
            maybe.update(r["id"] for r in store.notices.take(deliverer(n), [], 2))
            store.worker_exited(deliverer(n), WORKER_LOST, "")
            generation[0] += 1
            store.register_worker(deliverer(n), pid=1)
    while deliver("drainer", 100):
        pass
    assert set(confirmed) == server_ends
    assert set(confirmed.values()) <= {1}
    assert maybe <= server_ends and not worker_ends & server_ends


# ---- real processes ------------------------------------------------------------------------------

def signal_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f.read().splitlines()]


def finished_of(path, task_id):
    return [line[2] for line in signal_lines(path) if line[:2] == ["task_finished", task_id]]


@pytest.mark.timeout(120)
def test_task_finished_fires_once_for_each_way_the_server_ends_a_task():
    """The six cases of issue 17, with a real receiver in the workers: WorkerLost,
    TimeLimitExceeded, MemoryLimitExceeded, cancelled pending, cancelled running, and RUNNING
    when the server was SIGKILLed (ended WorkerLost at the restart); plus a task retried after
    WorkerLost (one task_finished, at its final end) and ordinary ends (the worker's own)."""
    directory = temp_dir()
    log, state_dir = os.path.join(directory, "signals"), os.path.join(directory, "state")
    attempts = os.path.join(directory, "attempts")
    options = {"WORKERS": 2, "TIME_LIMIT": 3, "MAX_TASK_MEMORY": 200, "STATE_DIR": state_dir}
    env = {"TASKS_SIGNAL_LOG": log}
    srv = ServerProcess(options=options, env=env, args=["--grace", "1"])
    cases = {}
    try:
        srv.wait_ready()
        with srv.settings():
            cases["worker lost"] = (tasks.die.enqueue(), WORKER_LOST)
            cases["time limit"] = (tasks.sleep.enqueue(30), TIME_LIMIT)
            cases["memory limit"] = (tasks.grow.enqueue(50, 0.05, 40,
                                                        os.path.join(directory, "grow")), MEMORY)
            later = tasks.sleep.using(run_after=timezone.now() + timedelta(hours=1))
            cases["cancelled pending"] = (later.enqueue(1), CANCELLED)
            assert cancel(cases["cancelled pending"][0])
            retried = tasks.dies_once.enqueue(attempts)  # WorkerLost, then SUCCESSFUL
            ordinary = [tasks.add.enqueue(1, 2), tasks.fail.enqueue("no")]
            for name in ("worker lost", "time limit", "memory limit"):
                wait(cases[name][0], timeout=30)
            wait(retried, timeout=30)
            running = tasks.sleep.enqueue(30)
            wait_until(lambda: tasks.sleep.get_result(running.id).status == "RUNNING", 20,
                       message="the task to run")
            assert cancel(running)
            cases["cancelled running"] = (running, CANCELLED)
            for result in ordinary:
                wait(result, timeout=20)
            at_crash = tasks.sleep.enqueue(30)
            wait_until(lambda: tasks.sleep.get_result(at_crash.id).status == "RUNNING", 20,
                       message="the task to run")
        kill_server_and_orphans(srv)
        srv = ServerProcess(options=options, env=env, args=["--grace", "1"])
        srv.wait_ready()
        cases["running at the crash"] = (at_crash, WORKER_LOST)
        everyone = [r for r, _ in cases.values()] + [retried, *ordinary]
        wait_until(lambda: all(finished_of(log, r.id) for r in everyone), 30,
                   message="task_finished for every task")
        time.sleep(1.5)  # a duplicate would come within the notice thread's next look
        with srv.settings():
            for name, (result, exception_path) in cases.items():
                assert finished_of(log, result.id) == ["FAILED"], name
                final = default_task_backend.get_result(result.id)
                assert final.errors[-1].exception_class_path == exception_path, name
        assert finished_of(log, retried.id) == ["SUCCESSFUL"]
        assert finished_of(log, ordinary[0].id) == ["SUCCESSFUL"]
        assert finished_of(log, ordinary[1].id) == ["FAILED"]
        assert srv.client().call("health")["notices"]["pending"] == 0
    finally:
        srv.stop()


@pytest.mark.timeout(90)
def test_a_notice_caught_mid_delivery_by_a_server_crash_is_delivered_after_the_restart():
    """The receiver blocks inside task_finished of a cancelled task's notice; the server is
    SIGKILLed (its workers follow it), so the signal never completed: the restarted server's
    worker delivers it, once."""
    directory = temp_dir()
    log, hold = os.path.join(directory, "signals"), os.path.join(directory, "hold")
    options = {"WORKERS": 1, "STATE_DIR": os.path.join(directory, "state")}
    env = {"TASKS_SIGNAL_LOG": log, "TASKS_SIGNAL_HOLD": hold}
    srv = ServerProcess(options=options, env=env, args=["--grace", "1"])
    try:
        srv.wait_ready()
        open(hold, "w").close()
        with srv.settings():
            later = tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 2)
            assert cancel(later)
        wait_until(lambda: os.path.exists(hold + ".entered"), 20,
                   message="the receiver to start on the notice")
        assert srv.client().call("health")["notices"] == {
            "pending": 1, "leased": 1, "delivered": 0, "dropped": 0}
        kill_server_and_orphans(srv)
        os.unlink(hold)
        assert finished_of(log, later.id) == []
        srv = ServerProcess(options=options, env=env, args=["--grace", "1"])
        srv.wait_ready()
        wait_until(lambda: finished_of(log, later.id), 20, message="the notice after restart")
        time.sleep(1.5)
        assert finished_of(log, later.id) == ["FAILED"]
        assert srv.client().call("health")["notices"]["pending"] == 0
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_without_state_dir_the_stop_says_what_is_lost():
    with running_server({"WORKERS": 1}) as srv, srv.settings():
        later = tasks.add.using(run_after=timezone.now() + timedelta(hours=1))
        later.enqueue(1, 2), later.enqueue(3, 4)
        wait(tasks.add.enqueue(5, 6), timeout=20)
    text = srv.output()
    assert "2 pending tasks and 1 result are lost: no STATE_DIR" in text, text
