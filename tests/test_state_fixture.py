"""A STATE_DIR written by django-tasks-shared 0.1.0 (tests/fixtures/state_v010, made by its
make.py on that release) restores unchanged: every record, the durable schedule notes and the
counters; the task RUNNING at the crash ends as 0.1.0 promised (its retry policy names
WorkerLost: back to READY). Both the crash leftovers (snapshot + journal) and a clean stop's
final snapshot. The fixture's files are copied first: a restore never writes into them."""

import json
import os
import shutil

import pytest

from django_tasks_shared.durable.statedir import StateDir
from django_tasks_shared.exceptions import WorkerLost
from django_tasks_shared.store import TaskStore

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "state_v010")
RUNNING_AT_CRASH = f"{7:032x}"
WORKER_LOST = f"{WorkerLost.__module__}.{WorkerLost.__qualname__}"


def _expected():
    with open(os.path.join(FIXTURE, "expected.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("name", ["crashed", "stopped"])
def test_state_dir_of_0_1_0_restores(name, tmp_path):
    directory = tmp_path / "state"
    shutil.copytree(os.path.join(FIXTURE, name), directory)
    files_before = sorted(os.listdir(directory))
    expected = _expected()
    store = TaskStore(max_results=100)
    state = StateDir(str(directory), fsync="never")
    state.lock()
    try:
        state.open(store, {"pid": os.getpid(), "version": "test"})
        # pending: 3 (retried, due later), 5 (deferred), 9 (scheduled); results: 1, 2, 4, 6, 8
        assert state.restored == {"pending": 3, "results": 5, "interrupted": 1}
        for task_id, want in expected[name].items():
            got = store.get(task_id)
            assert got is not None, task_id
            if task_id == RUNNING_AT_CRASH:
                # ended by the restore: WorkerLost is in its policy's `on`, so it is queued again
                assert got["status"] == "READY"
                assert got["errors"][-1]["exception_class_path"] == WORKER_LOST
                assert got["metadata"] == want["metadata"] == {"done": 40, "total": 100}
                continue
            for key, value in want.items():
                if key in ("metadata", "retry"):
                    assert got.get(key) == value, (task_id, key)
                else:
                    assert got[key] == value, (task_id, key)
        assert store.schedules.durable_value("schedule:nightly") == expected[name + "_durable"][
            "schedule:nightly"]
        counters = store.health()["counters"]
        for key, value in expected[name + "_counters"].items():
            assert counters[key] >= value, key
        # the queue order survives: 3 (its back-off ran out long ago) then 9 are due, in FIFO
        # order; 7 waits its 60 s back-off and 5 its run_after in 2030
        store.register_worker("w", 1)
        first = store.polls.claim_now("w", None)
        second = store.polls.claim_now("w", {"id": first["id"], "status": "SUCCESSFUL",
                                       "finished_at": None})
        third = store.polls.claim_now("w", {"id": second["id"], "status": "SUCCESSFUL",
                                      "finished_at": None})
        assert [first["id"], second["id"]] == [f"{3:032x}", f"{9:032x}"]
        assert not isinstance(third, dict)  # nothing else is due
    finally:
        state.close()
    # the restore wrote a snapshot and journal of its own, and removed the ones it covers
    assert sorted(os.listdir(directory)) != files_before
