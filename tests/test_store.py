"""TaskStore unit tests: the queue, the LRU of results and the worker hand-off, with no IPC."""

import threading
import time

import pytest

from django_tasks_shared.exceptions import QueueFull, ServerUnavailable
from django_tasks_shared.protocol.records import new_record
from django_tasks_shared.protocol.status import STOP
from django_tasks_shared.store import TaskStore
from helpers import Clock


def rec(task_id, priority=0, queue="default", run_after=None, args=()):
    return new_record(id=task_id, task="testproject.tasks.add", args=list(args), kwargs={},
                      priority=priority, queue=queue, run_after=run_after)


def make_store(clock=None, workers=("w1",), **kwargs):
    store = TaskStore(clock=clock or time.time, **kwargs)
    for worker_id in workers:
        store.register_worker(worker_id, pid=12345)
    return store


def claim(store, worker_id="w1", outcome=None, timeout=0):
    return store.polls.finish_and_claim(worker_id, outcome, timeout)


def ok(task_id, value=None):
    return {"id": task_id, "status": "SUCCESSFUL", "return_value": value}


def run_to_success(store, task_id, value=None):
    """Claim the next task (it must be `task_id`) with a one-off worker, report it SUCCESSFUL.

    The worker retires before reporting, so its report claims nothing else."""
    worker_id = f"once-{task_id}"
    store.register_worker(worker_id, pid=12345)
    record = claim(store, worker_id)
    assert record["id"] == task_id
    store.retire_worker(worker_id, "test")
    assert store.polls.finish_and_claim(worker_id, ok(task_id, value), 0) == STOP


@pytest.mark.timeout(10)
def test_priority_then_fifo():
    store = make_store()
    for task_id, priority in [("a", 0), ("b", 10), ("c", 0), ("d", 10), ("e", -5), ("f", 99)]:
        store.enqueue(rec(task_id, priority))
    order = []
    outcome = None
    while (record := claim(store, outcome=outcome)) is not None:
        order.append(record["id"])
        outcome = ok(record["id"])
    assert order == ["f", "b", "d", "a", "c", "e"]


@pytest.mark.timeout(10)
def test_deferred_run_after_promoted_when_due():
    clock = Clock()
    store = make_store(clock)
    store.enqueue(rec("later", priority=100, run_after=clock.now + 60))
    store.enqueue(rec("now", priority=0))
    store.enqueue(rec("past", priority=0, run_after=clock.now - 5))  # due already: ready
    health = store.health()
    assert health["queues"]["default"] == {"ready": 2, "deferred": 1}
    first = claim(store)
    assert first["id"] == "now"
    second = claim(store, outcome=ok("now"))
    assert second["id"] == "past"
    assert claim(store, outcome=ok("past")) is None  # "later" is not due
    assert store.get("later")["status"] == "READY"
    clock.advance(60)
    third = claim(store)
    assert third["id"] == "later"  # promoted, and it outranks nothing else now
    assert store.health()["queues"]["default"] == {"ready": 0, "deferred": 0}


@pytest.mark.timeout(10)
def test_promoted_deferred_task_keeps_its_priority():
    clock = Clock()
    store = make_store(clock)
    store.enqueue(rec("deferred-high", priority=50, run_after=clock.now + 1))
    store.enqueue(rec("low-1", priority=-1))
    store.enqueue(rec("low-2", priority=-1))
    assert claim(store)["id"] == "low-1"
    clock.advance(2)
    assert claim(store, outcome=ok("low-1"))["id"] == "deferred-high"


@pytest.mark.timeout(10)
def test_deferred_wakes_a_blocked_worker_when_due():
    store = make_store()  # real clock
    store.enqueue(rec("soon", run_after=time.time() + 0.3))
    start = time.monotonic()
    record = claim(store, timeout=5)
    elapsed = time.monotonic() - start
    assert record["id"] == "soon"
    assert 0.2 <= elapsed < 3, elapsed


@pytest.mark.timeout(10)
def test_queue_counts_and_pending():
    clock = Clock()
    store = make_store(clock)
    store.enqueue(rec("a"))
    store.enqueue(rec("b", queue="emails"))
    store.enqueue(rec("c", queue="emails", run_after=clock.now + 10))
    health = store.health()
    assert health["queues"] == {"default": {"ready": 1, "deferred": 0},
                                "emails": {"ready": 1, "deferred": 1}}
    assert health["pending"] == 3
    assert health["running"] == 0
    claim(store)
    health = store.health()
    assert health["pending"] == 2
    assert health["running"] == 1


@pytest.mark.timeout(10)
def test_records_are_json_dicts_with_timestamps_and_worker_ids():
    import json

    clock = Clock()
    store = make_store(clock)
    enqueued_at = store.enqueue(rec("a", args=[1, 2]))
    assert enqueued_at == clock.now
    clock.advance(1)
    record = claim(store)
    assert record["status"] == "RUNNING"
    assert record["started_at"] == record["last_attempted_at"] == clock.now
    assert record["worker_ids"] == ["w1"]
    clock.advance(1)
    store.polls.finish_and_claim("w1", {"id": "a", "status": "SUCCESSFUL", "return_value": 3,
                                  "finished_at": clock.now}, 0)
    final = store.get("a")
    json.dumps(final)
    assert final["status"] == "SUCCESSFUL"
    assert final["return_value"] == 3
    assert final["enqueued_at"] <= final["started_at"] <= final["finished_at"]


@pytest.mark.timeout(10)
def test_lru_evicts_least_recently_used_and_lookup_refreshes():
    store = make_store(max_results=3)
    for task_id in "abc":
        store.enqueue(rec(task_id))
        run_to_success(store, task_id)
    assert store.get("a") is not None  # a is now the most recent; b is the oldest
    store.enqueue(rec("d"))
    run_to_success(store, "d")
    assert store.get("b") is None
    for task_id in "acd":
        assert store.get(task_id)["status"] == "SUCCESSFUL"
    assert store.health()["results"]["stored"] == 3
    assert store.counters["evicted"] == 1


@pytest.mark.timeout(10)
def test_lru_never_evicts_pending_or_running():
    store = make_store(max_results=2, workers=("w1", "w2"))
    store.enqueue(rec("running"))
    assert claim(store, "w2")["id"] == "running"  # w2 holds it, RUNNING
    for i in range(5):
        store.enqueue(rec(f"pending-{i}", priority=-10))  # never claimed below
    for i in range(6):
        task_id = f"done-{i}"
        store.enqueue(rec(task_id, priority=10))
        run_to_success(store, task_id)
    assert store.get("running")["status"] == "RUNNING"
    for i in range(5):
        assert store.get(f"pending-{i}")["status"] == "READY"
    assert [store.get(f"done-{i}") is not None for i in range(6)] == [False] * 4 + [True] * 2
    assert store.health()["results"]["stored"] == 2
    # once it finishes, the former running task enters the LRU as its newest entry
    store.polls.finish_and_claim("w2", ok("running", 1), 0)
    assert store.get("running")["return_value"] == 1
    assert store.get("done-4") is None
    assert store.get("done-5") is not None


@pytest.mark.timeout(10)
def test_result_ttl():
    clock = Clock()
    store = make_store(clock, result_ttl=30)
    store.enqueue(rec("a"))
    run_to_success(store, "a")
    clock.advance(10)
    store.enqueue(rec("b"))
    run_to_success(store, "b")
    clock.advance(19)
    assert store.get("a") is not None  # 29 s old
    clock.advance(2)
    assert store.get("a") is None  # 31 s old: expired, even though just looked up
    assert store.get("b") is not None  # 21 s old
    store.enqueue(rec("pending"))
    clock.advance(100)
    store.sweep()
    assert store.get("b") is None
    assert store.get("pending")["status"] == "READY"  # TTL applies to finished results only
    assert store.counters["expired"] == 2
    assert store.health()["results"]["stored"] == 0


@pytest.mark.timeout(10)
def test_max_queue_raises_queue_full_and_stores_nothing():
    clock = Clock()
    store = make_store(clock, max_queue=2)
    store.enqueue(rec("a"))
    store.enqueue(rec("b", run_after=clock.now + 100))  # deferred counts as pending
    with pytest.raises(QueueFull, match="MAX_QUEUE=2"):
        store.enqueue(rec("c"))
    assert store.get("c") is None
    health = store.health()
    assert health["pending"] == 2
    assert health["counters"]["enqueued"] == 2
    assert health["counters"]["rejected_full"] == 1
    assert store.health()["queues"]["default"] == {"ready": 1, "deferred": 1}
    # running tasks do not count: claiming one makes room
    assert claim(store)["id"] == "a"
    store.enqueue(rec("c"))
    assert store.get("c")["status"] == "READY"


@pytest.mark.timeout(10)
def test_enqueue_is_idempotent_by_id():
    clock = Clock()
    store = make_store(clock)
    first = store.enqueue(rec("a", args=[1]))
    clock.advance(5)
    again = store.enqueue(rec("a", args=[2]))
    assert again == first
    assert store.get("a")["args"] == [1]
    assert store.health()["pending"] == 1
    assert store.counters["enqueued"] == 1
    assert claim(store)["id"] == "a"
    assert claim(store, outcome=ok("a")) is None  # only one copy was queued


@pytest.mark.timeout(10)
def test_counters():
    store = make_store()
    store.enqueue(rec("a"))
    store.enqueue(rec("b"))
    store.enqueue(rec("c"))
    claim(store)
    claim(store, outcome=ok("a"))
    claim(store, outcome={"id": "b", "status": "FAILED", "errors": [
        {"exception_class_path": "builtins.ValueError", "traceback": "tb"}]})
    store.fail_task("c", "django_tasks_shared.exceptions.TimeLimitExceeded", "too slow")
    counters = store.health()["counters"]
    assert counters["enqueued"] == 3
    assert counters["succeeded"] == 1
    assert counters["failed"] == 2
    assert counters["timed_out"] == 1
    assert store.get("b")["errors"][0]["exception_class_path"] == "builtins.ValueError"


@pytest.mark.timeout(10)
def test_finish_and_claim_blocks_until_timeout():
    store = make_store()
    start = time.monotonic()
    assert claim(store, timeout=0.3) is None
    assert 0.25 <= time.monotonic() - start < 3


@pytest.mark.timeout(10)
def test_finish_and_claim_is_woken_by_enqueue():
    store = make_store()
    got = {}

    def worker():
        start = time.monotonic()
        got["record"] = claim(store, timeout=8)
        got["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(0.2)
    store.enqueue(rec("a"))
    thread.join(9)
    assert got["record"]["id"] == "a"
    assert got["elapsed"] < 4  # woken, not timed out


@pytest.mark.timeout(10)
def test_finish_and_claim_reports_then_claims_in_one_call():
    store = make_store()
    store.enqueue(rec("a"))
    store.enqueue(rec("b"))
    assert claim(store)["id"] == "a"
    record = claim(store, outcome=ok("a", 42))
    assert record["id"] == "b"
    assert store.get("a")["return_value"] == 42
    assert store.worker_info("w1")["tasks_done"] == 1


@pytest.mark.timeout(10)
def test_wait_returns_when_finished():
    store = make_store()
    store.enqueue(rec("a"))
    got = {}

    def waiter():
        start = time.monotonic()
        got["record"] = store.polls.wait("a", 8)
        got["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)
    claim(store)
    store.polls.finish_and_claim("w1", ok("a", 7), 0)
    thread.join(9)
    assert got["record"]["status"] == "SUCCESSFUL"
    assert got["record"]["return_value"] == 7
    assert got["elapsed"] < 4
    # finished already: immediate; unknown: None; unfinished: returns the record at timeout
    assert store.polls.wait("a", 5)["return_value"] == 7
    assert store.polls.wait("nope", 5) is None
    store.enqueue(rec("b"))
    start = time.monotonic()
    assert store.polls.wait("b", 0.2)["status"] == "READY"
    assert time.monotonic() - start < 3


@pytest.mark.timeout(10)
def test_stop_on_drain():
    store = make_store(workers=("w1", "w2"))
    store.enqueue(rec("a"))
    got = {}
    thread = threading.Thread(target=lambda: got.setdefault("r", claim(store, "w2", timeout=8)))
    assert claim(store)["id"] == "a"
    thread.start()
    time.sleep(0.2)
    store.drain()
    thread.join(9)
    assert got["r"] == STOP  # a blocked claim is released
    with pytest.raises(ServerUnavailable, match="shutting down"):
        store.enqueue(rec("b"))  # a draining server would lose it: refused, nothing stored
    assert store.get("b") is None
    assert claim(store, outcome=ok("a")) == STOP  # the outcome is still recorded
    assert store.get("a")["status"] == "SUCCESSFUL"


@pytest.mark.timeout(10)
def test_stop_on_retire_and_unknown_worker():
    store = make_store(workers=("w1", "w2"))
    got = {}
    thread = threading.Thread(target=lambda: got.setdefault("r", claim(store, "w2", timeout=8)))
    thread.start()
    time.sleep(0.2)
    store.retire_worker("w2", "memory")
    thread.join(9)
    assert got["r"] == STOP
    store.enqueue(rec("a"))
    assert claim(store, "w2") == STOP
    assert claim(store, "ghost") == STOP
    assert claim(store, "w1")["id"] == "a"  # other workers go on


@pytest.mark.timeout(10)
def test_max_tasks_per_worker_retires_after_limit():
    store = make_store(max_tasks_per_worker=2)
    for task_id in "abc":
        store.enqueue(rec(task_id))
    assert claim(store)["id"] == "a"
    assert claim(store, outcome=ok("a"))["id"] == "b"
    assert claim(store, outcome=ok("b")) == STOP
    assert store.get("b")["status"] == "SUCCESSFUL"
    assert store.get("c")["status"] == "READY"


@pytest.mark.timeout(10)
def test_time_limit_spares_a_task_whose_report_came_after_it_was_found_overdue():
    """The supervisor asks overdue() under one hold of the lock and ends the task under
    another: right after a stall of the server, the report held by the stall comes in between
    and the worker runs its next task. fail_task(worker_id, over) then changes nothing (the
    supervisor leaves the worker alone); an attempt that really is over its limit still ends.
    Without the check, the next task ended WorkerLost (the stress harness's stall fault)."""
    clock = Clock()
    store = make_store(clock=clock)
    for task_id in "abc":
        store.enqueue(rec(task_id))
    assert claim(store)["id"] == "a"
    clock.advance(3.0)  # a stall: a's report waits in the socket
    assert [t for _, t, _ in store.overdue(2.0)] == ["a"]
    assert claim(store, outcome=ok("a"))["id"] == "b"  # the report comes first after all
    limit = "django_tasks_shared.exceptions.TimeLimitExceeded"
    assert not store.fail_task("a", limit, "too late", worker_id="w1", over=2.0)
    assert store.get("a")["status"] == "SUCCESSFUL"
    assert store.get("b")["status"] == "RUNNING"
    assert not store.fail_task("b", limit, "not over", worker_id="w1", over=2.0)  # 0 s in
    assert not store.fail_task("b", limit, "elsewhere", worker_id="w2", over=0.0)
    clock.advance(2.5)
    assert store.fail_task("b", limit, "over", worker_id="w1", over=2.0)
    assert store.get("b")["status"] == "FAILED"


@pytest.mark.timeout(10)
def test_late_outcome_ignored_after_fail_task():
    store = make_store()
    store.enqueue(rec("a"))
    claim(store)
    assert store.fail_task("a", "django_tasks_shared.exceptions.TimeLimitExceeded", "limit")
    assert not store.fail_task("a", "x.Y", "again")  # already ended
    store.enqueue(rec("b"))
    record = claim(store, outcome=ok("a", "late"))  # the worker's report arrives afterwards
    assert record["id"] == "b"
    final = store.get("a")
    assert final["status"] == "FAILED"
    assert final["return_value"] is None
    assert [e["exception_class_path"] for e in final["errors"]] == [
        "django_tasks_shared.exceptions.TimeLimitExceeded"]
    assert store.counters["succeeded"] == 0
    assert store.health()["running"] == 1  # only b


@pytest.mark.timeout(10)
def test_worker_exited_fails_its_running_task():
    store = make_store(workers=("w1", "w2"))
    store.enqueue(rec("a"))
    store.enqueue(rec("b"))
    claim(store, "w1")
    claim(store, "w2")
    worker, failed = store.worker_exited("w1", "django_tasks_shared.exceptions.WorkerLost",
                                         "pid 1 killed by SIGKILL")
    assert failed == ["a"]
    assert store.get("a")["status"] == "FAILED"
    assert store.get("b")["status"] == "RUNNING"
    assert store.counters["worker_lost"] == 1
    assert claim(store, "w1") == STOP


@pytest.mark.timeout(20)
def test_concurrent_enqueue_and_claim_loses_nothing():
    store = make_store(workers=("w1", "w2", "w3"))
    n_producers, per_producer = 4, 250
    seen = []
    seen_lock = threading.Lock()
    done = threading.Event()

    def produce(p):
        for i in range(per_producer):
            store.enqueue(rec(f"{p}-{i}", priority=i % 3))

    def consume(worker_id):
        outcome = None
        while True:
            record = store.polls.finish_and_claim(worker_id, outcome, 0.05)
            outcome = None
            if record is None:
                if done.is_set():
                    return
                continue
            with seen_lock:
                seen.append(record["id"])
            outcome = ok(record["id"])

    consumers = [threading.Thread(target=consume, args=(w,)) for w in ("w1", "w2", "w3")]
    producers = [threading.Thread(target=produce, args=(p,)) for p in range(n_producers)]
    for t in consumers + producers:
        t.start()
    for t in producers:
        t.join(15)
    wait_for = time.monotonic() + 10
    while store.health()["pending"] or store.health()["running"]:
        assert time.monotonic() < wait_for
        time.sleep(0.01)
    done.set()
    for t in consumers:
        t.join(5)
    total = n_producers * per_producer
    assert sorted(seen) == sorted({f"{p}-{i}" for p in range(n_producers)
                                   for i in range(per_producer)})
    assert store.counters["succeeded"] == total


# ---- retries and metadata ----------------------------------------------------------------------

POLICY = {"max_attempts": 3, "delay": 1.0, "factor": 2.0, "max_delay": 300.0,
          "on": ["builtins.Exception", "django_tasks_shared.exceptions.WorkerLost"]}
ERROR = {"exception_class_path": "builtins.ValueError", "traceback": "ValueError: x\n"}


def failed(task_id, retry):
    return {"id": task_id, "status": "FAILED", "errors": [ERROR], "retry": retry}


@pytest.mark.timeout(10)
def test_a_retried_attempt_goes_back_to_ready_under_its_id_after_the_backoff():
    clock = Clock()
    store = make_store(clock)
    store.enqueue(dict(rec("t"), retry=POLICY))
    assert claim(store)["id"] == "t"
    assert claim(store, outcome=failed("t", True)) is None  # deferred: nothing to claim yet
    record = store.get("t")
    assert record["status"] == "READY" and record["errors"] == [ERROR]
    assert 1.0 <= record["run_after"] - clock.now <= 1.1  # delay 1 s, jitter <= 10 %
    assert store.health()["queues"]["default"] == {"ready": 0, "deferred": 1}
    clock.advance(1.1)
    second = claim(store)
    assert second["id"] == "t" and second["worker_ids"] == ["w1", "w1"]
    # the worker said "no retry" (not in `on`, or no attempts left): it ends FAILED for good
    assert claim(store, outcome=failed("t", False)) is None
    record = store.get("t")
    assert record["status"] == "FAILED" and record["errors"] == [ERROR, ERROR]
    counters = store.health()["counters"]
    assert (counters["retried"], counters["failed"]) == (1, 1)


@pytest.mark.timeout(10)
def test_supervisor_endings_are_retried_only_when_named_in_on():
    clock = Clock()
    store = make_store(clock)
    store.enqueue(dict(rec("named"), retry=POLICY))
    store.enqueue(dict(rec("unnamed"), retry=dict(POLICY, on=["builtins.Exception"])))
    claim(store)
    store.fail_task("named", "django_tasks_shared.exceptions.WorkerLost", "lost\n")
    assert store.get("named")["status"] == "READY"
    assert claim(store)["id"] == "unnamed"
    store.fail_task("unnamed", "django_tasks_shared.exceptions.WorkerLost", "lost\n")
    assert store.get("unnamed")["status"] == "FAILED"
    store.enqueue(dict(rec("late"), retry=POLICY))
    clock.advance(5)
    assert claim(store)["id"] == "named"
    store.fail_task("named", "django_tasks_shared.exceptions.TimeLimitExceeded", "slow\n")
    assert store.get("named")["status"] == "FAILED"  # TimeLimitExceeded is not in `on`
    assert len(store.get("named")["errors"]) == 2


@pytest.mark.timeout(10)
def test_save_metadata_merges_while_running_and_the_outcome_carries_the_last_value():
    store = make_store()
    store.enqueue(rec("m"))
    assert store.save_metadata("m", {"done": 1}) is False  # not running yet
    claim(store)
    assert store.save_metadata("m", {"done": 1, "total": 9}) is True
    assert store.save_metadata("m", {"done": 2}) is True
    assert store.metadata("m") == ("RUNNING", {"done": 2, "total": 9})
    worker = store.health()["workers"][0]
    assert worker["current_task"]["progress"] == {"done": 2, "total": 9}
    claim(store, outcome=dict(ok("m"), metadata={"done": 9}))
    assert store.metadata("m") == ("SUCCESSFUL", {"done": 9, "total": 9})
    assert store.save_metadata("m", {"done": 10}) is False  # finished
    assert store.metadata("nope") is None
