"""enqueue_many (issue 16): many tasks in one round trip per chunk, all or nothing, TaskResults in
order with task_enqueued for each; enqueue() in a loop on any other backend. The store's
staging (store/bulk.py) at the unit level, the rest against a real server."""

import pytest
from django.tasks import TaskResultStatus
from django.tasks.signals import task_enqueued
from django.test import override_settings

from django_tasks_shared import enqueue_many, wait_all
from django_tasks_shared.client import bulk
from django_tasks_shared.client.connection import StoreClient
from django_tasks_shared.exceptions import PayloadTooLarge, QueueFull, ServerUnavailable
from django_tasks_shared.protocol.records import new_record
from django_tasks_shared.store import TaskStore
from helpers import running_server
from testproject import flow_tasks, tasks


def rec(task_id):
    return new_record(id=task_id, task="testproject.tasks.add", args=[1, 2], kwargs={})


# ---- the store: chunks staged, the call stored at its last chunk or not at all ----------------

@pytest.mark.timeout(10)
def test_chunks_are_staged_and_stored_together_at_the_last_one():
    store = TaskStore()
    assert store.bulk.enqueue_many([rec("a"), rec("b")], "call", 0, False) is None
    assert store.records == {} and store.pending_count() == 0  # nothing visible yet
    store.bulk.enqueue_many([rec("b"), rec("c")], "call", 0, False)  # chunk 0 sent again
    answer = store.bulk.enqueue_many([rec("d")], "call", 1, True)
    assert sorted(store.records) == ["b", "c", "d"] and len(answer) == 3
    assert all(isinstance(at, float) for at in answer)
    # the last chunk again (its reply was lost): the same answer, nothing new
    assert store.bulk.enqueue_many([rec("d")], "call", 1, True) == answer
    assert store.counters["enqueued"] == 3
    with pytest.raises(ValueError, match="without the chunks before it"):
        store.bulk.enqueue_many([rec("e")], "other", 1, True)


@pytest.mark.timeout(10)
def test_a_call_that_does_not_fit_stores_nothing():
    store = TaskStore(max_queue=4)
    store.enqueue(rec("x"))
    store.bulk.enqueue_many([rec("a"), rec("b")], "call", 0, False)
    with pytest.raises(QueueFull, match="none was stored"):
        store.bulk.enqueue_many([rec("c"), rec("d")], "call", 1, True)  # 1 + 4 > 4
    assert sorted(store.records) == ["x"] and store.counters["rejected_full"] == 1
    store.drain()
    with pytest.raises(ServerUnavailable, match="shutting down"):
        store.bulk.enqueue_many([rec("e")], "late", 0, True)
    assert sorted(store.records) == ["x"]


# ---- the client against a real server ---------------------------------------------------------

@pytest.fixture(scope="module")
def srv():
    with running_server({"WORKERS": 1, "MAX_QUEUE": 1200, "MAX_PAYLOAD": 4096}) as server:
        yield server


@pytest.mark.timeout(60)
def test_enqueue_many_returns_results_in_order_one_round_trip_per_chunk(srv, monkeypatch):
    sent, calls = [], []
    original = StoreClient.call

    def counting(self, method, *args):
        calls.append(method)
        return original(self, method, *args)

    def receiver(sender, task_result, **kwargs):
        sent.append(task_result.id)

    monkeypatch.setattr(StoreClient, "call", counting)
    monkeypatch.setattr(bulk, "CHUNK", 250)
    task_enqueued.connect(receiver)
    try:
        with srv.settings():
            results = enqueue_many(tasks.add, [((i, i), {}) for i in range(500)] +
                                   [((), {"a": 1, "b": 2})])
    finally:
        task_enqueued.disconnect(receiver)
    assert calls == ["enqueue_many"] * 3  # 250 + 250 + 1
    assert sent == [r.id for r in results] and len(set(sent)) == 501
    assert all(r.status == TaskResultStatus.READY and r.enqueued_at for r in results)
    with srv.settings():
        wait_all(results, 30)
    assert [r.return_value for r in results] == [2 * i for i in range(500)] + [3]


@pytest.mark.timeout(60)
def test_bad_arguments_too_large_or_too_many_store_nothing(srv):
    before = srv.client().call("health")["counters"]["enqueued"]
    with srv.settings():
        with pytest.raises(TypeError, match=r"call 2: arguments of task .* JSON-serializable"):
            enqueue_many(tasks.add, [((1, 2), {}), ((3, 4), {}), ((object(), 1), {})])
        with pytest.raises(PayloadTooLarge, match="call 1: arguments"):
            enqueue_many(tasks.add, [((1, 2), {}), (("x" * 5000, ""), {})])
        with pytest.raises(TypeError, match="call 0 must be an .args, kwargs. pair"):
            enqueue_many(tasks.add, [(1, 2, 3)])
        with pytest.raises(QueueFull, match="none was stored"):  # 3 chunks, 1201 > MAX_QUEUE
            enqueue_many(tasks.add, [((1, 1), {})] * 1201)
        with pytest.raises(TypeError, match="takes a Task"):
            enqueue_many(tasks.add.func, [((1, 1), {})])
        assert enqueue_many(tasks.add, []) == []
    assert srv.client().call("health")["counters"]["enqueued"] == before


@pytest.mark.timeout(60)
def test_a_unique_task_in_a_list_gets_its_holder_as_enqueue_does(srv):
    sent = []

    def receiver(sender, task_result, **kwargs):
        sent.append(task_result.id)

    task_enqueued.connect(receiver)
    try:
        with srv.settings():
            results = enqueue_many(flow_tasks.unique_job,
                                   [(("k1",), {"seconds": 0.3}), (("k1",), {}), (("k2",), {})])
    finally:
        task_enqueued.disconnect(receiver)
    assert results[1].id == results[0].id != results[2].id
    assert sent == [results[0].id, results[2].id]  # none for the call that got the holder
    with srv.settings():
        wait_all(results, 30)
    assert all(r.status == TaskResultStatus.SUCCESSFUL for r in results)


@pytest.mark.timeout(30)
def test_on_another_backend_it_is_enqueue_in_a_loop():
    immediate = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend",
                             "QUEUES": ["default", "emails"]}}
    with override_settings(TASKS=immediate):
        results = enqueue_many(tasks.add, [((1, 2), {}), ((), {"a": 3, "b": 4})])
        assert [r.return_value for r in results] == [3, 7]
        assert all(r.backend == "default" for r in results)
