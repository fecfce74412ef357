"""Prefetch in the store (issue 16): batch claims, reservations and the start table, each
promise at the unit level with a real start table (protocol/starts.py) standing in for a
worker's. The same through real worker processes: tests/test_prefetch.py."""

import os
import pickle
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_tasks_shared.protocol.records import new_record
from django_tasks_shared.protocol.starts import (
    FINISHED,
    GONE,
    REVOKED,
    STARTED,
    UNKNOWN,
    StartTable,
)
from django_tasks_shared.protocol.status import (
    FAILED,
    READY,
    RUNNING,
    STOP,
    SUCCESSFUL,
    TASK_CANCELLED,
    WORKER_LOST,
)
from django_tasks_shared.store import TaskStore

PARENT = os.getppid()  # a start table's "server pid": the worker's parent (here, ours)


def rec(task_id, priority=0, **extra):
    record = new_record(id=task_id, task="testproject.tasks.add", args=[], kwargs={},
                        priority=priority)
    record.update(extra)
    return record


def store_with(n=0, workers=("w1",), threads=1, capacity=4, pool_threads=1, **options):
    store = TaskStore(**options)
    tables = {}
    for worker_id in workers:
        tables[worker_id] = StartTable.create(threads, capacity)
        store.register_worker(worker_id, pid=1, table=tables[worker_id],
                              pool_threads=pool_threads)
    for i in range(n):
        store.enqueue(rec(f"t{i}"))
    return store, tables


def batch(store, worker="w1", outcomes=(), thread=0, seq=0, want=4):
    got = store.polls.claim_batch(worker, list(outcomes), 0, thread, seq, want)
    return got


def ok(record, at=None):
    outcome = {"id": record["id"], "status": SUCCESSFUL, "finished_at": time.time(),
               "return_value": None, "attempt": len(record["worker_ids"])}
    if "rseq" in record:
        outcome["rseq"], outcome["started_at"] = record["rseq"], at
    return outcome


def ids(records):
    return [r["id"] for r in records]


@pytest.mark.timeout(10)
def test_a_batch_runs_one_task_and_reserves_the_rest_which_stay_ready_everywhere():
    store, _ = store_with(10)
    got = batch(store)
    assert ids(got) == ["t0", "t1", "t2", "t3"]
    # the first runs now (its outcome's table entry: "hold"), the others are reservations
    assert "rseq" not in got[0] and got[0]["hold"] == 1
    assert [r["rseq"] for r in got[1:]] == [2, 3, 4]
    # the worker's copies are as it runs them; the store's records are READY until started
    assert {r["status"] for r in got} == {RUNNING} and got[1]["worker_ids"] == ["w1"]
    assert store.get("t0")["status"] == RUNNING
    for task_id in ("t1", "t2", "t3"):
        record = store.get(task_id)
        assert record["status"] == READY and record["started_at"] is None
        assert record["worker_ids"] == [] and "reserved" in store.records[task_id]
    health = store.health()
    assert health["pending"] == 9 and health["queues"]["default"]["ready"] == 9
    assert health["running"] == 1 and health["reserved"] == 3
    assert health["workers"][0]["reserved"] == 3
    assert store.overdue(0.0) == [("w1", "t0", pytest.approx(0.0, abs=1))]  # t0 only


@pytest.mark.timeout(10)
def test_a_shallow_queue_gives_one_task_per_claim():
    store, _ = store_with(3, workers=("w1", "w2"), pool_threads=2)
    assert ids(batch(store, "w1")) == ["t0"]  # 3 ready for 2 threads: one each
    assert ids(batch(store, "w2")) == ["t1"]
    for i in range(3, 8):
        store.enqueue(rec(f"t{i}"))
    # 6 ready, 2 threads: the first task and 2 reserved
    assert ids(batch(store, "w1", seq=1)) == ["t2", "t3", "t4"]


@pytest.mark.timeout(10)
def test_the_real_start_comes_from_the_start_table_and_counts_for_time_limits():
    store, tables = store_with(4)
    got = batch(store)
    time.sleep(0.05)
    at = tables["w1"].step(0, None, got[1]["rseq"], PARENT)
    assert isinstance(at, float) and at > store.records["t0"]["started_at"] + 0.04
    record = store.get("t1")  # a view reads the table: RUNNING since the real start
    assert record["status"] == RUNNING and record["started_at"] == at
    assert record["last_attempted_at"] == at and record["worker_ids"] == ["w1"]
    assert "t1" in store.workers["w1"]["current"]
    overdue = dict(((w, t), ran) for w, t, ran in store.overdue(0.0))
    assert overdue[("w1", "t1")] < overdue[("w1", "t0")] - 0.04
    # its outcome comes later (here, with the worker's next batch claim): taken once
    batch(store, outcomes=[ok(got[0]), ok(got[1], at)], seq=1)
    assert store.records["t1"]["status"] == SUCCESSFUL
    assert store.records["t1"]["started_at"] == at


@pytest.mark.timeout(10)
def test_a_reported_start_is_taken_without_reading_the_table():
    store, tables = store_with(2)
    got = batch(store, want=2)
    at = tables["w1"].step(0, None, got[1]["rseq"], PARENT)
    store.polls.claim_batch("w1", [], 0, 1, 0, 2)  # (any call: nothing synced here)
    assert store.records["t1"]["status"] == READY  # not looked at yet
    assert store.report("w1", [ok(got[0]), ok(got[1], at)]) == 2
    assert store.records["t1"]["status"] == SUCCESSFUL
    assert store.records["t1"]["started_at"] == at
    # sent again (a lost reply): counted once
    store.report("w1", [ok(got[1], at)])
    assert store.counters["succeeded"] == 2


@pytest.mark.timeout(10)
def test_a_dead_workers_reservations_go_back_to_their_place_and_never_end_worker_lost():
    store, tables = store_with(6, workers=("w1", "w2"), capacity=4)
    got = batch(store, "w1")
    assert ids(got) == ["t0", "t1", "t2", "t3"]
    at = tables["w1"].step(0, None, got[1]["rseq"], PARENT)  # t1 started, t2 and t3 did not
    _, failed = store.worker_exited("w1", WORKER_LOST, "killed")
    assert sorted(failed) == ["t0", "t1"]  # what it ran: it may have had effects
    assert store.records["t1"]["status"] == FAILED and store.records["t1"]["started_at"] == at
    for task_id in ("t2", "t3"):
        assert store.records[task_id]["status"] == READY
        assert store.records[task_id]["errors"] == [] and "reserved" not in store.records[task_id]
    assert store.reservations.given_back == 2 and store.counters["worker_lost"] == 2
    # their place: before t4, t5 (FIFO kept), and the next claim gets them
    assert ids(batch(store, "w2", want=4)) == ["t2", "t3", "t4", "t5"]


@pytest.mark.timeout(10)
def test_outcomes_held_in_the_table_survive_their_worker_and_show_at_once():
    """A worker that finished t0 and t1 (their outcomes held in its table for the next claim),
    started t2 and died: t0 and t1 end as they ran, t2 WorkerLost, t3 goes back."""
    store, tables = store_with(5, workers=("w1", "w2"))
    got = batch(store)
    table = tables["w1"]
    out0 = dict(ok(got[0]), return_value="zero")
    at1 = table.step(0, (got[0]["hold"], pickle.dumps(out0)), got[1]["rseq"], PARENT)
    assert store.get("t1")["status"] == RUNNING  # a view: t1 started
    assert store.get("t0")["return_value"] == "zero"  # a view: t0 finished, its outcome held
    out1 = dict(ok(got[1], at1), return_value="one")
    at2 = table.step(0, (got[1]["rseq"], pickle.dumps(out1)), got[2]["rseq"], PARENT)
    # a view reads the table: t1's outcome is there before any report
    assert store.get("t1")["status"] == SUCCESSFUL and store.get("t1")["return_value"] == "one"
    _, failed = store.worker_exited("w1", WORKER_LOST, "killed by its next task")
    assert failed == ["t2"] and store.records["t2"]["started_at"] == at2
    assert (store.records["t0"]["status"], store.records["t0"]["return_value"]) == \
        (SUCCESSFUL, "zero")
    assert store.records["t3"]["status"] == READY and store.counters["worker_lost"] == 1
    # the reports arrive late (from a reporter): taken once, nothing changes
    store.report("w1", [out0, out1])
    assert store.counters["succeeded"] == 2


@pytest.mark.timeout(10)
def test_a_higher_priority_task_waits_behind_at_most_prefetch_minus_one_reserved():
    store, tables = store_with(12, capacity=4)
    first = batch(store)
    store.enqueue(rec("urgent", priority=10))
    # the thread runs its batch (t0, then t1..t3 reserved: 3 = PREFETCH - 1) ...
    outcomes = [ok(first[0])]
    for record in first[1:]:
        at = tables["w1"].step(0, None, record["rseq"], PARENT)
        outcomes.append(ok(record, at))
    # ... and its next claim gets the urgent task first
    assert ids(batch(store, outcomes=outcomes, seq=1))[0] == "urgent"


@pytest.mark.timeout(10)
def test_cancelling_a_reservation_revokes_it_and_a_started_one_is_a_running_cancel():
    store, tables = store_with(4)
    got = batch(store)
    assert store.cancels.cancel("t2") is True
    record = store.records["t2"]
    assert record["status"] == FAILED
    assert record["errors"][-1]["exception_class_path"] == TASK_CANCELLED
    assert tables["w1"].step(0, None, got[2]["rseq"], PARENT) is REVOKED  # the worker skips it
    assert store.reservations.of_worker("w1") == 2 and store.workers["w1"]["retiring"] is False
    assert store.cancels.take_kills() == []
    # t1 has started (its worker wrote the table): cancelling it stops its worker
    tables["w1"].step(0, None, got[1]["rseq"], PARENT)
    assert store.cancels.cancel("t1") is True
    assert store.records["t1"]["worker_ids"] == ["w1"]
    assert [kill[1] for kill in store.cancels.take_kills()] == ["t1"]
    # the worker retires: t3, not started, goes back to the queue for the others
    assert store.records["t3"]["status"] == READY and store.reservations.of_worker("w1") == 0
    assert tables["w1"].step(0, None, got[3]["rseq"], PARENT) is REVOKED


@pytest.mark.timeout(10)
def test_a_repeated_batch_claim_gets_the_same_batch():
    store, _ = store_with(8)
    got = batch(store, seq=0)
    again = batch(store, seq=0)  # the reply was lost: the same claim again
    assert ids(again) == ids(got) and [r.get("rseq") for r in again] == \
        [r.get("rseq") for r in got]
    assert store.workers["w1"]["claimed"] == 4 and store.reservations.of_worker("w1") == 3
    store.cancels.cancel("t2")
    assert ids(batch(store, seq=0)) == ["t0", "t1", "t3"]  # what is left of it


@pytest.mark.timeout(10)
def test_max_tasks_per_worker_counts_reservations():
    store, _ = store_with(10, max_tasks_per_worker=3)
    assert len(batch(store)) == 3
    assert batch(store, seq=1) == STOP


@pytest.mark.timeout(10)
def test_retiring_and_draining_give_the_reservations_back():
    store, tables = store_with(10, workers=("w1", "w2"))
    got = batch(store, "w1")
    store.retire_worker("w1", "MAX_WORKER_MEMORY")
    assert store.reservations.of_worker("w1") == 0
    assert all(tables["w1"].step(0, None, r["rseq"], PARENT) is REVOKED for r in got[1:])
    assert ids(batch(store, "w2"))[:3] == ["t1", "t2", "t3"]
    store.drain()
    assert store.reservations.of_worker("w2") == 0 and store.pending_count() == 8


@pytest.mark.timeout(10)
def test_a_concurrency_slot_is_held_by_a_reservation_and_a_rate_limit_ends_the_batch():
    store, tables = store_with(0, workers=("w1", "w2"))
    for i in range(3):
        store.enqueue(rec(f"c{i}", limit={"key": "k", "concurrency": 2, "rate": None}))
    got = batch(store, "w1")
    assert ids(got) == ["c0", "c1"]  # c1 reserved holds the second slot
    assert store.polls.claim_batch("w2", [], 0, 0, 0, 4) is None  # c2 waits for a slot
    tables["w1"].step(0, None, got[1]["rseq"], PARENT)
    _, failed = store.worker_exited("w1", WORKER_LOST, "killed")
    assert ids(batch(store, "w2")) == ["c2"]  # slots released by the ends
    store2, _ = store_with(0)
    store2.enqueue(rec("a"))
    store2.enqueue(rec("r1", limit={"key": "r", "concurrency": None, "rate": [5, 60.0]}))
    store2.enqueue(rec("b"))
    assert ids(batch(store2)) == ["a"]  # a rate-limited task is only handed out first
    assert ids(batch(store2, seq=1)) == ["r1", "b"]


@pytest.mark.timeout(10)
def test_a_unique_key_until_started_is_held_while_reserved():
    store, tables = store_with(0)
    store.enqueue(rec("a"))
    store.flows.enqueue(rec("u", unique={"key": "k", "until": "started"}))
    store.enqueue(rec("b"))
    got = batch(store)
    assert ids(got) == ["a", "u", "b"]
    assert store.flows.enqueue(rec("u2", unique={"key": "k", "until": "started"}))["id"] == "u"
    tables["w1"].step(0, None, got[1]["rseq"], PARENT)
    store.get("u")  # synced: it started
    assert store.flows.enqueue(rec("u2", unique={"key": "k", "until": "started"}))["id"] == "u2"


@pytest.mark.timeout(10)
def test_the_start_table_refuses_a_start_once_the_server_is_gone():
    table = StartTable.create(2, 4)
    assert table.step(1, None, 5, os.getpid()) is GONE  # our parent is not ourselves
    assert table.entries([(1, 5)]) == {}
    assert table.revoke(1, 5) is None and table.step(1, None, 5, PARENT) is REVOKED
    at = table.step(1, None, 6, PARENT)
    assert table.revoke(1, 6) == (STARTED, at, None)
    assert table.entries([(1, 6), (0, 6)]) == {(1, 6): (STARTED, at, None)}
    # the outcome of 6 held for the next claim, written as 7 starts (one lock hold)
    at7 = table.step(1, (6, b"outcome"), 7, PARENT)
    assert table.entries([(1, 6), (1, 7)]) == {(1, 6): (FINISHED, at, b"outcome"),
                                               (1, 7): (STARTED, at7, None)}
    table.step(1, (8, b"first"), None, PARENT)  # a batch's first task: no start of its own
    assert table.entries([(1, 8)]) == {(1, 8): (FINISHED, 0.0, b"first")}
    attached = StartTable.attach(os.dup(table.fd))
    assert attached.capacity == 4 and attached.threads == 2
    attached.close()
    table.close()


@pytest.mark.timeout(10)
def test_a_table_locked_by_another_process_is_unknown_never_guessed():
    import subprocess
    import sys

    table = StartTable.create(1, 4)
    holder = subprocess.Popen(  # another process (a worker thread) inside the table's lock
        [sys.executable, "-c", f"import fcntl, time; fcntl.lockf({table.fd}, fcntl.LOCK_EX, 0, "
         f"0); print('locked', flush=True); time.sleep(30)"],
        pass_fds=(table.fd,), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert table.entries([(0, 1)]) is UNKNOWN
        assert table.revoke(0, 1) is UNKNOWN
    finally:
        holder.kill()
        holder.wait(5)
    assert table.revoke(0, 1) is None  # its lock went with it
    table.close()


@pytest.mark.timeout(10)
def test_the_prefetch_option_is_checked_and_off_with_fsync_always(settings):
    from django_tasks_shared.client.options import ConfigError, build_config

    def config(**options):
        return build_config("default", options, kind="process", queues=("default",),
                            secret_key="s" * 50, settings_module="testproject.settings")

    assert config().prefetch == 8 and config().effective_prefetch == 8
    assert config(PREFETCH=1).effective_prefetch == 1
    assert config(STATE_DIR="/tmp/x", FSYNC="always").effective_prefetch == 1
    assert config(STATE_DIR="/tmp/x", FSYNC="everysec", PREFETCH=16).effective_prefetch == 16
    for bad in (0, 257, 2.5, "8", None, True):
        with pytest.raises(ConfigError, match="PREFETCH"):
            config(PREFETCH=bad)


class ScriptedClient:
    """Answers calls from a script: an exception to raise, or a value."""

    def __init__(self, *script):
        self.script, self.calls = list(script), []

    def call(self, method, *args):
        self.calls.append((method, args))
        answer = self.script.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.mark.timeout(10)
def test_a_worker_falls_back_to_one_task_per_claim_when_batches_are_not_served():
    from django_tasks_shared.exceptions import ServerStalled
    from django_tasks_shared.worker import prefetch

    not_exposed = AttributeError("method 'claim_batch' of the task store is not exposed")
    claimer = prefetch.BatchClaimer(ScriptedClient(not_exposed), "w", 0, 0.5, 8)
    assert claimer.next([]) == prefetch.FALLBACK
    # an answered batch claim, then a stall: the same outcomes and seq again
    outcome = {"id": "a", "status": SUCCESSFUL, "finished_at": 1.0, "attempt": 1}
    client = ScriptedClient([{"id": "b"}], ServerStalled("no answer"), STOP)
    claimer = prefetch.BatchClaimer(client, "w", 0, 0.5, 8)
    assert claimer.next([]) == [{"id": "b"}]
    assert claimer.next([outcome]) == STOP
    assert client.calls[1:] == [("claim_batch", ("w", [outcome], 0.5, 0, 1, 8))] * 2


@pytest.mark.timeout(10)
def test_the_reporter_sends_an_outcome_held_too_long_and_leaves_the_rest_to_the_claim():
    from django_tasks_shared.worker import prefetch

    client = ScriptedClient(1, 1)
    reporter = prefetch.Reporter(client, "w", delay=0.05).start()
    try:
        reporter.hold({"id": "a"})
        assert reporter.take() == [{"id": "a"}]  # the next claim took it: nothing sent
        time.sleep(0.15)
        assert client.calls == []
        reporter.hold({"id": "b"})
        time.sleep(0.3)  # its thread runs a long task: sent on its own
        assert client.calls == [("report", ("w", [{"id": "b"}]))]
        reporter.hold({"id": "c"})
    finally:
        reporter.stop()  # what is held goes out before the worker exits
    assert client.calls[-1] == ("report", ("w", [{"id": "c"}]))


# ---- a property: whatever the interleaving, nothing lost, nothing run twice ------------------

STEPS = st.lists(st.tuples(st.sampled_from(  # (repeated: weights)
    ["enqueue"] * 2 + ["claim"] * 3 + ["start"] * 4 + ["finish"] * 4 + ["report"] * 2 +
    ["cancel", "die", "sync", "retire"]), st.integers(0, 3)), max_size=80)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS)
def test_every_task_ends_once_and_a_started_one_never_runs_again(steps):
    store = TaskStore()
    tables, held, alive, finished = {}, {}, [], set()
    started = {}  # task id -> how many times a worker started it
    count = 0

    def spawn():
        worker_id = f"w{len(tables)}"
        tables[worker_id] = StartTable.create(1, 4)
        store.register_worker(worker_id, pid=1, table=tables[worker_id], pool_threads=2)
        held[worker_id] = []
        alive.append(worker_id)
        return worker_id

    spawn()
    spawn()
    seqs, outs = {}, {}
    for action, n in steps:
        worker_id = alive[n % len(alive)]
        mine = held[worker_id]
        waiting = outs.setdefault(worker_id, [])
        if action == "enqueue":
            for _ in range(n + 1):
                store.enqueue(rec(f"t{count}"))
                count += 1
        elif action == "claim" and not mine:
            seq = seqs.get(worker_id, 0)
            got = store.polls.claim_batch(worker_id, waiting, 0, 0, seq, 4)
            waiting.clear()
            seqs[worker_id] = seq + 1
            if isinstance(got, list):
                mine.extend([r, None] for r in got)
                # the first one is handed out RUNNING: its worker may start it at once (a
                # claim's task, as without prefetch); the others are reservations
                started[got[0]["id"]] = started.get(got[0]["id"], 0) + 1
                mine[0][1] = got[0]["started_at"]
        elif action == "start" and mine and mine[0][1] is None:
            record = mine[0][0]
            if "rseq" in record:  # (a claim's first task is started already, see above)
                at = tables[worker_id].step(0, None, record["rseq"], PARENT)
                if at is REVOKED:
                    mine.pop(0)
                    continue
            else:
                at = record["started_at"]
            mine[0][1] = at
            started[record["id"]] = started.get(record["id"], 0) + 1
        elif action == "finish" and mine and mine[0][1] is not None:
            record, at = mine.pop(0)
            outcome = ok(record, at)
            waiting.append(outcome)
            slot = record.get("rseq", record.get("hold"))
            if mine and slot is not None:  # more of its batch to run: held in the table
                tables[worker_id].step(0, (slot, pickle.dumps(outcome)), None, PARENT)
                finished.add(record["id"])
        elif action == "report" and waiting:
            store.report(worker_id, list(waiting))
            waiting.clear()
        elif action == "cancel" and count:
            store.cancels.cancel(f"t{n * 7 % count}")
        elif action == "die" or (action == "retire" and not mine):
            if action == "retire":
                store.retire_worker(worker_id, "test")
            store.worker_exited(worker_id, WORKER_LOST, "gone")
            alive.remove(worker_id)
            held.pop(worker_id)
            spawn()
        elif action == "sync":
            store.health()
        elif action == "retire":
            store.retire_worker(worker_id, "test")
    # no task started twice; a READY one never started; one that never started never ended
    # WorkerLost (a reservation given back instead)
    assert all(times == 1 for times in started.values()), started
    for task_id in finished:  # an outcome held in the table is never lost with its worker
        errors = [e["exception_class_path"] for e in store.records[task_id]["errors"]]
        assert WORKER_LOST not in errors, (task_id, store.records[task_id])
    store.health()  # a view: what the workers' tables say started is RUNNING from here on
    for task_id, record in store.records.items():
        if record["status"] == READY:
            assert task_id not in started, (task_id, record)
        if task_id not in started:
            errors = [e["exception_class_path"] for e in record["errors"]]
            assert WORKER_LOST not in errors, (task_id, record)
    assert store.pending_count() == sum(r["status"] == READY for r in store.records.values())
    for table in tables.values():
        table.close()
