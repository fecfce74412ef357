"""execution.execute() called directly (pure code: no server, the worker's client is never called
by these tasks): the lean path keeps every behaviour of the plain one. The same paths run end to
end in test_backend, test_progress, test_retries, test_bad_input and test_durability. Last, end
to end with a real server and worker: no DB connection outlives its task (CONN_MAX_AGE=0), and
a persistent one (CONN_MAX_AGE=None) is kept."""

import json
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from enum import IntEnum

import psutil
import pytest
from django.tasks.base import TaskResultStatus
from django.tasks.signals import task_finished, task_started
from hypothesis import given, settings
from hypothesis import strategies as st

from django_tasks_shared import current_result_id, set_progress, wait
from django_tasks_shared.client.connection import StoreClient
from django_tasks_shared.protocol.payload import arguments_bound, json_bound
from django_tasks_shared.protocol.records import new_record
from django_tasks_shared.protocol.status import RUNNING
from django_tasks_shared.worker.execution import execute
from django_tasks_shared.worker.progress import _reporter
from helpers import running_server, temp_dir
from testproject import tasks

MAX = 10 * 1024 * 1024


def claimed(task, *args, **kwargs):
    """A record as finish_and_claim hands it to a worker."""
    record = new_record(id=secrets.token_hex(16), task=task, args=list(args), kwargs=kwargs)
    now = time.time()
    record.update(status=RUNNING, enqueued_at=now - 0.5, started_at=now, last_attempted_at=now,
                  worker_ids=["w-test"])
    return record


def run(record, max_payload=MAX, client=None):
    """execute() in a thread of its own, as in a worker: Django's connections are per thread, and
    this test process's main thread may hold one from another test (pytest-django would refuse
    the check execute() makes on it)."""
    from django_tasks_shared.client.backend import ProcessPoolBackend

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(execute, record, ProcessPoolBackend, max_payload, client).result(30)


class Small(IntEnum):
    ONE = 1


@pytest.mark.parametrize("value", [
    None, True, False, 0, -1, 2**63 - 1, -(2**63) + 1, 0.1, -1.2345678901234567e-308, 1e308,
    float("nan"), float("inf"), float("-inf"), "", "x", "é", "\x00", "\U0001F600" * 50,
    "\u2028" * 7, '"\\' * 9])
def test_the_json_bound_is_never_below_the_real_size(value):
    assert json_bound(value) >= len(json.dumps(value))


def test_no_bound_for_other_types_they_are_measured():
    for value in (2**63, -(2**63), 10**5000, [], {}, ["x"], Small.ONE,
                  type("S", (str,), {})("x"), b"x"):
        assert json_bound(value) is None, type(value)


SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**63) + 1, 2**63 - 1),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40))


@settings(max_examples=200, deadline=None)
@given(st.lists(SCALAR, max_size=6), st.dictionaries(st.text(max_size=8), SCALAR, max_size=4))
def test_the_arguments_bound_of_an_enqueue_is_never_below_the_real_size(args, kwargs):
    """The client skips normalize_json and json.dumps of scalar arguments under this bound
    (client/backend.py): it must hold for every such call."""
    assert arguments_bound(args, kwargs) >= len(json.dumps([args, kwargs]))
    assert arguments_bound([[1]], {}) is None and arguments_bound([], {1: 2}) is None


def test_a_success_sends_both_signals_with_the_running_then_finished_result():
    seen = []

    def on_started(sender, task_result, **kwargs):
        seen.append(("started", task_result.status, task_result.started_at,
                     current_result_id.get()))

    def on_finished(sender, task_result, **kwargs):
        seen.append(("finished", task_result.status, task_result.return_value,
                     task_result.finished_at))

    task_started.connect(on_started, weak=False)
    task_finished.connect(on_finished, weak=False)
    try:
        record = claimed("testproject.tasks.add", 2, 3)
        outcome = run(record)
    finally:
        task_started.disconnect(on_started)
        task_finished.disconnect(on_finished)
    assert outcome == {"id": record["id"], "status": "SUCCESSFUL",
                       "finished_at": outcome["finished_at"], "return_value": 5}
    (s_name, s_status, started_at, running_id), (f_name, f_status, value, finished_at) = seen
    assert (s_name, s_status, running_id) == ("started", TaskResultStatus.RUNNING, record["id"])
    assert started_at.timestamp() == pytest.approx(record["started_at"])
    assert started_at.tzinfo is not None  # USE_TZ = True in the test settings
    assert (f_name, f_status, value) == ("finished", TaskResultStatus.SUCCESSFUL, 5)
    assert finished_at.timestamp() == pytest.approx(outcome["finished_at"])
    assert current_result_id.get(None) is None and _reporter.get(None) is None  # reset after


def test_context_async_and_return_values_normalized_like_django():
    out = run(claimed("testproject.tasks.with_context", 7))
    assert out["return_value"]["x"] == 7 and out["return_value"]["attempt"] == 1
    assert run(claimed("testproject.tasks.async_add", 2, 40))["return_value"] == 42
    assert run(claimed("testproject.tasks.send_email", "a@b"))["return_value"] == "sent to a@b"
    bad = run(claimed("testproject.tasks.bad_return"))  # normalize_json refuses object()
    assert bad["status"] == "FAILED"
    assert bad["errors"][0]["exception_class_path"] == "builtins.TypeError"


def test_max_payload_fails_a_large_return_value_at_the_exact_size():
    text = "x" * 2000  # 2,002 bytes as JSON; the cheap bound (24,002) does not decide it
    assert run(claimed("testproject.tasks.send_email", text), 2010)["status"] == "SUCCESSFUL"
    over = run(claimed("testproject.tasks.send_email", text), 2000)
    assert over["status"] == "FAILED"
    assert over["errors"][0]["exception_class_path"] == \
        "django_tasks_shared.exceptions.PayloadTooLarge"
    assert "takes 2010 bytes as JSON, over MAX_PAYLOAD=2000" in over["errors"][0]["traceback"]
    # an int too long for json.dumps fails as it always did (ValueError), not as a small value
    huge = run(claimed("testproject.tasks.add", 10**5000, 0))
    assert huge["status"] == "FAILED"
    assert huge["errors"][0]["exception_class_path"] == "builtins.ValueError"
    assert run(claimed("testproject.tasks.add", 10**5000, 0), None)["status"] == "SUCCESSFUL"


def test_a_failure_and_an_unimportable_task_are_failed_outcomes():
    failed = run(claimed("testproject.tasks.fail", "boom"))
    assert failed["status"] == "FAILED" and "ValueError: boom" in failed["errors"][0]["traceback"]
    assert "retry" not in failed
    gone = run(claimed("testproject.no_such_module.task"))
    assert gone["status"] == "FAILED"
    assert "cannot be imported in this process" in gone["errors"][0]["traceback"]


def test_set_progress_needs_a_worker_run_and_a_quiet_task_never_calls_the_client():
    with pytest.raises(RuntimeError, match="only inside a task run by a django-tasks-shared"):
        set_progress(done=1)
    # no client (as before: progress is a worker's): set_progress inside the task is an error
    out = run(claimed("testproject.tasks.progress_then_pause", 0))
    assert out["status"] == "FAILED"
    assert "RuntimeError" in out["errors"][0]["exception_class_path"]
    # with a client that reaches no server: a task that reports nothing makes no round trip
    nowhere = StoreClient("/nonexistent/dts-test.sock", b"k" * 32, timeout=0.5)
    out = run(claimed("testproject.tasks.add", 1, 1), client=nowhere)
    assert out["status"] == "SUCCESSFUL" and "metadata" not in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("max_age, kept", [("0", False), ("none", True)])
def test_a_db_connection_is_closed_between_tasks_unless_persistent(max_age, kept):
    database = f"{temp_dir()}/conn.sqlite3"
    env = {"TASKS_TEST_DB": database, "TASKS_CONN_MAX_AGE": max_age}
    with running_server({"WORKERS": 1}, env=env) as srv, srv.settings():
        states, held = [], []
        for _ in range(3):  # one after another, on the one worker thread
            result = tasks.db_connection_state.enqueue()
            wait(result, timeout=20)
            assert result.status == TaskResultStatus.SUCCESSFUL, result.errors
            states.append(result.return_value)
            # finished = reported, after the check that follows the task: between two tasks
            # the idle worker holds the database file open only if the connection is kept
            files = psutil.Process(result.return_value["pid"]).open_files()
            held.append(any(os.path.samefile(f.path, database) for f in files
                            if os.path.exists(f.path)))
    assert len({s["pid"] for s in states}) == 1
    assert [s["open_at_start"] for s in states] == [False, kept, kept]
    assert held == [kept] * 3


def test_a_wrapped_task_call_is_honoured(monkeypatch):
    """Instrumentation that wraps Task.call (after the worker imported execution.py) still sees
    every call; a sync task on Django's own Task.call skips only Task.call's per-call check."""
    from django.tasks.base import Task

    calls = []
    original = Task.call

    def wrapped(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Task, "call", wrapped)
    assert run(claimed("testproject.tasks.add", 1, 2))["return_value"] == 3
    assert run(claimed("testproject.tasks.with_context", 5))["return_value"]["x"] == 5
    assert calls == ["add", "with_context"]
