"""Idempotent claims and reports (issue 15), at the unit level: the store's claim memo and
once-per-attempt reports (store/claims.py, TaskStore._finish), and the worker's Claimer, which
sends an unanswered claim again (worker/claims.py). The same through a real server and a real
SIGSTOP: tests/test_stalls.py."""

import threading

import pytest

from django_tasks_shared.exceptions import ServerStalled, ServerUnavailable
from django_tasks_shared.protocol.records import new_record
from django_tasks_shared.protocol.retry_policy import DEFAULTS
from django_tasks_shared.protocol.status import READY, RUNNING, STOP, SUCCESSFUL
from django_tasks_shared.store import TaskStore
from django_tasks_shared.worker.claims import BACKOFF_MAX, Claimer


def rec(task_id, retry=None):
    return new_record(id=task_id, task="testproject.tasks.add", args=[], kwargs={}, retry=retry)


def store_with(*ids, workers=("w1",), retry=None):
    store = TaskStore()
    for worker_id in workers:
        store.register_worker(worker_id, pid=12345)
    for task_id in ids:
        store.enqueue(rec(task_id, retry))
    return store


def claim(store, worker_id="w1", outcome=None, thread=0, seq=0):
    return store.polls.report_and_claim(worker_id, outcome, 0, thread, seq)


def ok(task_id, attempt=1, value=None):
    return {"id": task_id, "status": SUCCESSFUL, "finished_at": None, "return_value": value,
            "attempt": attempt}


@pytest.mark.timeout(10)
def test_a_repeated_claim_gets_the_same_task_not_a_second_one():
    store = store_with("a", "b")
    first = claim(store, seq=0)
    assert first["id"] == "a"
    again = claim(store, seq=0)  # its reply was lost: the worker sends it again
    assert again["id"] == "a" and again["worker_ids"] == ["w1"]
    assert store.records["b"]["status"] == READY
    assert store.workers["w1"]["claimed"] == 1
    # the next claim (seq 1) reports "a" and gets "b"; another thread's claim is its own
    assert claim(store, outcome=ok("a"), seq=1)["id"] == "b"
    assert claim(store, thread=1, seq=0) is None  # nothing left (None: the wait ran out)


@pytest.mark.timeout(10)
def test_a_resent_report_counts_once_and_keeps_the_first_outcome():
    store = store_with("a", "b")
    claim(store, seq=0)
    assert claim(store, outcome=ok("a", value=1), seq=1)["id"] == "b"
    assert claim(store, outcome=ok("a", value=2), seq=1)["id"] == "b"  # resent as a whole
    assert store.records["a"]["return_value"] == 1
    assert store.counters["succeeded"] == 1 and store.workers["w1"]["tasks_done"] == 1


@pytest.mark.timeout(10)
def test_a_report_of_an_earlier_attempt_is_ignored_when_the_task_runs_again():
    policy = {**DEFAULTS, "max_attempts": 3, "delay": 0.0, "on": ["builtins.Exception"]}
    store = store_with("a", retry=policy)
    claim(store, seq=0)
    failed = {"id": "a", "status": "FAILED", "finished_at": None, "retry": True, "attempt": 1,
              "errors": [{"exception_class_path": "builtins.ValueError", "traceback": "1"}]}
    again = claim(store, outcome=failed, seq=1)  # attempt 1 failed, back to the queue ...
    assert again["id"] == "a" and again["worker_ids"] == ["w1", "w1"]  # ... attempt 2, here
    # attempt 1's report arrives once more (its reply was lost before the worker saw "a" again)
    claim(store, outcome=failed, thread=1, seq=0)
    record = store.records["a"]
    assert record["status"] == RUNNING and len(record["errors"]) == 1
    assert store.counters["retried"] == 1
    # attempt 2's own report is taken
    assert claim(store, outcome=ok("a", attempt=2, value="two"), seq=2) is None
    assert store.records["a"]["status"] == SUCCESSFUL
    assert store.records["a"]["return_value"] == "two"


@pytest.mark.timeout(10)
def test_a_repeated_claim_of_a_task_ended_meanwhile_gets_a_new_one():
    store = store_with("a", "b")
    claim(store, seq=0)
    store.fail_task("a", "django_tasks_shared.exceptions.TimeLimitExceeded", "late")
    assert claim(store, seq=0)["id"] == "b"  # "a" is over: no second run of it


@pytest.mark.timeout(10)
def test_the_memo_goes_with_its_worker_and_old_claims_still_work():
    store = store_with("a", "b", workers=("w1", "w2"))
    claim(store, "w1", seq=0)
    assert "w1" in store.claims.last
    store.worker_exited("w1", "django_tasks_shared.exceptions.WorkerLost", "gone")
    assert "w1" not in store.claims.last
    assert claim(store, "w1", seq=0) == STOP  # an unknown worker
    # finish_and_claim (0.1.0 workers, no token) is unchanged
    got = store.polls.finish_and_claim("w2", None, 0)
    assert got["id"] == "b"
    assert store.polls.finish_and_claim("w2", ok("b"), 0) is None
    assert store.records["b"]["status"] == SUCCESSFUL


class FlakyClient:
    """A client whose first `failures` calls get no answer; records every call it gets."""

    def __init__(self, failures, replies, error=None):
        self.failures, self.replies = failures, list(replies)
        self.error = error or ServerStalled("no answer")
        self.calls = []
        self.lock = threading.Lock()

    def call(self, method, *args):
        with self.lock:
            self.calls.append((method, args))
            if self.failures:
                self.failures -= 1
                raise self.error
            return self.replies.pop(0)


@pytest.mark.timeout(10)
def test_the_claimer_sends_the_same_report_and_token_until_answered():
    client = FlakyClient(3, [None, {"id": "x", "worker_ids": ["w"]}])
    pauses = []
    claimer = Claimer(client, "w", 2, 0.5, legacy=threading.Event(), sleep=pauses.append)
    record = {"id": "r", "worker_ids": ["v", "w"]}
    outcome = {"id": "r", "status": SUCCESSFUL, "finished_at": 1.0}
    assert claimer.next(outcome, record) is None
    assert claimer.next(None) == {"id": "x", "worker_ids": ["w"]}
    sent = client.calls
    assert len(sent) == 5 and claimer.resends == 3
    # the same report (attempt 2: the record's second worker id) and seq 0, four times
    assert all(call == ("report_and_claim", ("w", dict(outcome, attempt=2), 0.5, 2, 0))
               for call in sent[:4])
    assert sent[4] == ("report_and_claim", ("w", None, 0.5, 2, 1))  # then the next claim
    assert pauses == [0.05, 0.1, 0.2] and max(pauses) <= BACKOFF_MAX


@pytest.mark.timeout(10)
def test_the_claimer_resends_a_report_the_server_refused():
    """A ServerUnavailable ANSWER (e.g. StorageUnavailable while the disk is full) is no
    answer to the report either: it is sent again, never dropped."""
    refused = type("Refused", (ServerUnavailable,), {})("the disk is full")
    client = FlakyClient(2, [None], error=refused)
    claimer = Claimer(client, "w", 0, 0.5, legacy=threading.Event(), sleep=lambda s: None)
    assert claimer.next({"id": "r", "status": SUCCESSFUL, "finished_at": 1.0},
                        {"id": "r", "worker_ids": ["w"]}) is None
    assert len(client.calls) == 3 and claimer.resends == 2


@pytest.mark.timeout(10)
def test_the_claimer_falls_back_to_finish_and_claim_on_an_old_server():
    not_exposed = AttributeError("method 'report_and_claim' of the task store is not exposed "
                                 "(ident 'store')")
    client = FlakyClient(1, [None, None], error=not_exposed)
    legacy = threading.Event()
    claimer = Claimer(client, "w", 0, 0.5, legacy=legacy, sleep=lambda s: None)
    assert claimer.next(None) is None
    assert legacy.is_set()
    assert client.calls[1] == ("finish_and_claim", ("w", None, 0.5))
    assert claimer.next(None) is None
    assert [method for method, _ in client.calls] == \
        ["report_and_claim", "finish_and_claim", "finish_and_claim"]
