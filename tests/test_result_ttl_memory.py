"""RESULT_TTL memory is bounded by MAX_RESULTS (issue 15): the expiry deque used to keep an
entry for every task ever finished (200,000 tasks with MAX_RESULTS=100 grew the server by
32 MB); it is compacted so that it stays O(MAX_RESULTS), and expiry still works."""

import time

import pytest

from django_tasks_shared.protocol.records import new_record
from django_tasks_shared.store import TaskStore
from django_tasks_shared.store.results import COMPACT_SLACK
from helpers import Clock


def finish_many(store, n, clock, start=0):
    store.register_worker("w", pid=1)
    for i in range(start, start + n):
        store.enqueue(new_record(id=f"t{i}", task="testproject.tasks.add", args=[], kwargs={}))
        got = store.polls.finish_and_claim("w", None, 0)
        store.polls.finish_and_claim("w", {"id": got["id"], "status": "SUCCESSFUL",
                                           "finished_at": clock.now}, 0)
        clock.now += 0.001


@pytest.mark.timeout(60)
def test_the_expiry_deque_stays_within_twice_max_results():
    clock = Clock()
    store = TaskStore(max_results=100, result_ttl=3600, clock=clock)
    started = time.perf_counter()
    finish_many(store, 20_000, clock)
    seconds = time.perf_counter() - started
    expiry = store.finished.expiry
    print(f"\n20,000 finishes with MAX_RESULTS=100, RESULT_TTL=3600: expiry deque "
          f"{len(expiry)} entries (was 20,000), {seconds * 1e6 / 20_000:.1f} us per task")
    assert len(store.finished) == 100
    assert len(expiry) <= 2 * 100 + COMPACT_SLACK
    assert store.counters["evicted"] == 19_900
    # what is left is exactly the kept results, in finishing order
    kept = [task_id for _, task_id in expiry]
    assert set(kept) >= set(store.finished) and kept == sorted(kept, key=lambda t: int(t[1:]))

    # expiry still works: past the TTL every kept result goes, and the deque empties
    clock.now += 3601
    assert store.health()["results"]["stored"] == 0
    assert store.counters["expired"] == 100 and len(expiry) == 0


@pytest.mark.timeout(60)
def test_ids_finished_again_are_compacted_too():
    """An id added again (a re-enqueued id finishing once more) leaves its old entry behind:
    the compaction keeps only the latest entry of each kept id."""
    clock = Clock()
    store = TaskStore(max_results=10, result_ttl=60, clock=clock)
    finish_many(store, 10, clock)
    for _ in range(200):  # the same ten finish "again" in the deque's view: re-adds
        for task_id in list(store.finished):
            store.finished.add(task_id, store.records[task_id]["finished_at"])
    assert len(store.finished.expiry) <= 2 * 10 + COMPACT_SLACK
    ids = [task_id for _, task_id in store.finished.expiry]
    assert sorted(set(ids)) == sorted(store.finished)
