"""The backends against a real `manage.py tasks_server`: every behaviour issue 2 promises."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import (
    InvalidTaskBackend,
    TaskResultDoesNotExist,
    TaskResultMismatch,
)
from django.tasks.signals import task_enqueued
from django.utils import timezone

from django_tasks_shared import ProcessPoolBackend, ThreadPoolBackend, wait
from django_tasks_shared.exceptions import QueueFull, ServerAuthenticationError, ServerUnavailable
from helpers import (
    MANAGE,
    ServerProcess,
    child_env,
    short_socket_path,
    tasks_settings,
    wait_until,
)
from testproject import tasks

THREAD_POOL = "django_tasks_shared.ThreadPoolBackend"


def start_server(**kwargs):
    """A tasks_server whose workers are all up (so no test sees them as its leftovers)."""
    srv = ServerProcess(**kwargs)
    try:
        srv.wait_ready()
        expected = srv.client().call("health")["server"]["workers_expected"]
        wait_until(lambda: sum(w["state"] == "idle" for w in srv.client().call("health")["workers"])
                   >= expected, 30, message="workers ready")
    except BaseException:
        srv.stop()
        raise
    return srv


def health(srv):
    return srv.client().call("health")


def wait_running(result, timeout=15):
    def running():
        result.refresh()
        return result.status == TaskResultStatus.RUNNING
    wait_until(running, timeout, message=f"{result.id} RUNNING")


@pytest.fixture(scope="module")
def srv():
    """Two worker processes, shared by the tests that do not block or fill it."""
    server = start_server(options={"WORKERS": 2})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def one():
    """ONE worker process (given as MAX_WORKERS, django-tasks-local's name) and MAX_QUEUE=6."""
    server = start_server(options={"MAX_WORKERS": 1, "MAX_QUEUE": 6})
    try:
        yield server
    finally:
        server.stop()


# ---- running tasks -----------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_capabilities(srv):
    with srv.settings():
        backend = task_backends["default"]
        assert isinstance(backend, ProcessPoolBackend)
        assert backend.supports_get_result and backend.supports_priority
        assert backend.supports_defer and backend.supports_async_task


@pytest.mark.timeout(60)
def test_priority_then_fifo_order(one, tmp_path):
    path = str(tmp_path / "order.txt")
    with one.settings():
        blocker = tasks.sleep.enqueue(2.0)
        wait_running(blocker)  # the only worker is busy: everything below queues up
        results = [
            tasks.record_order.using(priority=priority).enqueue(path, label)
            for label, priority in [("low", -10), ("mid-1", 0), ("high", 50), ("mid-2", 0),
                                    ("top", 100)]]
        blocker.refresh()
        assert blocker.status == TaskResultStatus.RUNNING  # all five were queued behind it
        for result in results:
            wait(result, timeout=20)
            assert result.status == TaskResultStatus.SUCCESSFUL
        wait(blocker, timeout=20)
    with open(path) as f:
        assert f.read().split() == ["top", "high", "mid-1", "mid-2", "low"]


@pytest.mark.timeout(60)
def test_run_after_is_honoured(srv):
    with srv.settings():
        run_after = timezone.now() + timedelta(seconds=2)
        result = tasks.add.using(run_after=run_after).enqueue(1, 1)
        time.sleep(0.5)
        result.refresh()
        assert result.status == TaskResultStatus.READY  # both workers are idle, yet it waits
        assert health(srv)["queues"]["default"]["deferred"] == 1
        wait(result, timeout=20)
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value == 2
        assert result.started_at >= run_after
        assert result.started_at - run_after < timedelta(seconds=5)


@pytest.mark.timeout(60)
def test_async_task(srv):
    with srv.settings():
        result = tasks.async_add.enqueue(20, 22)
        wait(result, timeout=20)
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value == 42


@pytest.mark.timeout(60)
def test_takes_context(srv):
    with srv.settings():
        result = tasks.with_context.enqueue(x=5)
        wait(result, timeout=20)
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value == {"id": result.id, "attempt": 1, "x": 5}


@pytest.mark.timeout(60)
def test_current_result_id_and_worker_identity(srv):
    with srv.settings():
        result = tasks.whoami.enqueue()
        wait(result, timeout=20)
        assert result.status == TaskResultStatus.SUCCESSFUL
        value = result.return_value
        assert value["result_id"] == result.id
        assert value["pid"] != os.getpid()
        workers = {w["id"]: w["pid"] for w in health(srv)["workers"]}
        assert len(result.worker_ids) == 1
        assert workers[result.worker_ids[0]] == value["pid"]  # worker_ids name the real worker


@pytest.mark.timeout(60)
def test_timestamps_are_ordered_and_real(srv):
    with srv.settings():
        before = timezone.now()
        result = tasks.sleep.enqueue(0.2)
        assert result.enqueued_at is not None
        assert before - timedelta(seconds=1) <= result.enqueued_at <= timezone.now()
        wait(result, timeout=20)
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.enqueued_at <= result.started_at <= result.finished_at
        assert result.last_attempted_at == result.started_at
        assert result.finished_at - result.started_at >= timedelta(seconds=0.19)
        assert result.finished_at <= timezone.now()
        fresh = tasks.sleep.get_result(result.id)
        assert (fresh.enqueued_at, fresh.started_at, fresh.finished_at) == (
            result.enqueued_at, result.started_at, result.finished_at)
        assert fresh.worker_ids == result.worker_ids
        assert fresh.worker_ids[0] in {w["id"] for w in health(srv)["workers"]}


@pytest.mark.timeout(60)
def test_failure_records_task_error(srv):
    with srv.settings():
        result = tasks.fail.enqueue("kaboom")
        wait(result, timeout=20)
        assert result.status == TaskResultStatus.FAILED
        assert len(result.errors) == 1
        error = result.errors[0]
        assert error.exception_class_path == "builtins.ValueError"
        assert error.exception_class is ValueError
        assert "Traceback (most recent call last)" in error.traceback
        assert "ValueError: kaboom" in error.traceback
        assert "tasks.py" in error.traceback  # the traceback reaches into the task function
        with pytest.raises(ValueError, match="Task failed"):
            result.return_value  # noqa: B018


@pytest.mark.timeout(60)
def test_non_json_arguments_rejected_with_nothing_stored(srv):
    with srv.settings():
        before = health(srv)
        with pytest.raises(TypeError, match="JSON"):
            tasks.add.enqueue(object(), 1)
        with pytest.raises(TypeError, match="JSON"):
            tasks.add.enqueue(1, b={1, 2})
        after = health(srv)
        assert after["counters"]["enqueued"] == before["counters"]["enqueued"]
        assert after["pending"] == before["pending"] == 0


@pytest.mark.timeout(60)
def test_non_json_return_value_fails_with_type_error(srv):
    with srv.settings():
        result = tasks.bad_return.enqueue()
        wait(result, timeout=20)
        assert result.status == TaskResultStatus.FAILED
        assert result.errors[0].exception_class_path == "builtins.TypeError"
        assert result.errors[0].exception_class is TypeError
        # the worker survived it
        assert tasks.add.get_result(wait(tasks.add.enqueue(1, 2), 20).id).return_value == 3


@pytest.mark.timeout(60)
def test_unknown_result_id(srv):
    with srv.settings():
        with pytest.raises(TaskResultDoesNotExist):
            tasks.add.get_result("no-such-id")


@pytest.mark.timeout(90)
def test_lru_eviction_gives_does_not_exist():
    server = start_server(options={"WORKERS": 1, "MAX_RESULTS": 2})
    try:
        with server.settings():
            a = wait(tasks.add.enqueue(1, 0), 20)
            b = wait(tasks.add.enqueue(2, 0), 20)
            assert tasks.add.get_result(a.id).return_value == 1  # a is now the most recent
            c = wait(tasks.add.enqueue(3, 0), 20)
            with pytest.raises(TaskResultDoesNotExist):
                tasks.add.get_result(b.id)
            with pytest.raises(TaskResultDoesNotExist):
                b.refresh()
            assert tasks.add.get_result(a.id).return_value == 1
            assert tasks.add.get_result(c.id).return_value == 3
            assert health(server)["results"]["evicted"] == 1
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_queue_full(one):
    with one.settings():
        blocker = tasks.sleep.enqueue(2.0)
        wait_running(blocker)
        before = health(one)["counters"]["enqueued"]
        queued = [tasks.add.enqueue(i, i) for i in range(6)]
        with pytest.raises(QueueFull, match="MAX_QUEUE=6"):
            tasks.add.enqueue(100, 100)
        state = health(one)
        assert state["pending"] == 6
        assert state["running"] == 1  # the blocker still holds the only worker
        assert state["counters"]["enqueued"] == before + 6  # the rejected one left no trace
        assert state["counters"]["rejected_full"] >= 1
        for i, result in enumerate(queued):
            assert wait(result, 20).return_value == 2 * i
        wait(blocker, 20)
        wait(tasks.add.enqueue(1, 1), 20)  # room again


# ---- configuration and connection errors ------------------------------------------------------

@pytest.mark.timeout(60)
def test_max_workers_accepted(one):
    assert len(health(one)["workers"]) == 1  # `one` was started with MAX_WORKERS=1
    with tasks_settings(short_socket_path(), {"MAX_WORKERS": 3}):
        assert task_backends["default"].config.workers == 3
    with tasks_settings(short_socket_path(), {"MAX_WORKERS": 5}, backend=THREAD_POOL):
        config = task_backends["default"].config
        assert (config.workers, config.threads) == (1, 5)


@pytest.mark.timeout(60)
def test_unknown_option_is_an_error_naming_the_key(tmp_path):
    with tasks_settings(short_socket_path(), {"WORKERS": 1, "BOGUS_OPTION": 1}):
        with pytest.raises(InvalidTaskBackend, match="BOGUS_OPTION"):
            tasks.add.enqueue(1, 2)
    # and at start-up: the server refuses to run, naming the key
    proc = subprocess.run(
        [sys.executable, MANAGE, "tasks_server"], capture_output=True, text=True, timeout=30,
        env=child_env(short_socket_path(), {"BOGUS_OPTION": 1}))
    assert proc.returncode != 0
    assert "BOGUS_OPTION" in proc.stdout + proc.stderr


@pytest.mark.timeout(60)
def test_wrong_authkey_is_a_clear_error(srv):
    with srv.settings(AUTHKEY="not-the-right-key-0123456789"):
        start = time.monotonic()
        with pytest.raises(ServerAuthenticationError) as excinfo:
            tasks.add.enqueue(1, 2)
        assert time.monotonic() - start < 5
        message = str(excinfo.value)
        assert "authkey" in message.lower()
        assert srv.address in message
        assert "not-the-right-key" not in message  # never echo the secret
    assert health(srv)["pending"] == 0


@pytest.mark.timeout(60)
def test_server_down_unix_socket_gives_server_unavailable():
    address = short_socket_path()
    with tasks_settings(address, {"WORKERS": 1}):
        start = time.monotonic()
        with pytest.raises(ServerUnavailable) as excinfo:
            tasks.add.enqueue(1, 2)
        assert time.monotonic() - start < 5
        assert address in str(excinfo.value)
        start = time.monotonic()
        with pytest.raises(ServerUnavailable):
            tasks.add.get_result("anything")
        assert time.monotonic() - start < 5


@pytest.mark.timeout(60)
def test_server_down_tcp_gives_server_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    with tasks_settings(address, {"WORKERS": 1}):
        start = time.monotonic()
        with pytest.raises(ServerUnavailable) as excinfo:
            tasks.add.enqueue(1, 2)
        assert time.monotonic() - start < 5
        assert address in str(excinfo.value)


@pytest.mark.timeout(60)
def test_stalled_server_gives_server_unavailable_not_a_hang():
    address = short_socket_path()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(16)  # connects succeed, but nobody ever answers
    try:
        with tasks_settings(address, {"WORKERS": 1, "CONNECT_TIMEOUT": 1.0}):
            start = time.monotonic()
            with pytest.raises(ServerUnavailable) as excinfo:
                tasks.add.enqueue(1, 2)
            elapsed = time.monotonic() - start
            assert elapsed < 6, elapsed
            assert address in str(excinfo.value)
    finally:
        listener.close()


# ---- API surface ------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_aenqueue_and_aget_result(srv):
    async def scenario():
        result = await tasks.add.aenqueue(4, 5)
        for _ in range(400):
            fetched = await tasks.add.aget_result(result.id)
            if fetched.status == TaskResultStatus.SUCCESSFUL:
                break
            await asyncio.sleep(0.05)
        await result.arefresh()
        return result, fetched

    with srv.settings():
        result, fetched = asyncio.run(scenario())
    assert fetched.status == TaskResultStatus.SUCCESSFUL
    assert fetched.return_value == 9
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 9


@pytest.mark.timeout(60)
def test_refresh_polls_to_completion(srv):
    with srv.settings():
        result = tasks.sleep.enqueue(0.5)
        assert result.status == TaskResultStatus.READY
        deadline = time.monotonic() + 20
        seen = set()
        while result.status != TaskResultStatus.SUCCESSFUL:
            assert time.monotonic() < deadline
            time.sleep(0.02)
            result.refresh()
            seen.add(result.status)
        assert TaskResultStatus.RUNNING in seen
        assert result.return_value == 0.5
        assert result.finished_at is not None


@pytest.mark.timeout(60)
def test_get_result_of_another_task_is_a_mismatch(srv):
    with srv.settings():
        result = wait(tasks.add.enqueue(1, 2), 20)
        with pytest.raises(TaskResultMismatch):
            tasks.whoami.get_result(result.id)
        assert tasks.add.get_result(result.id).return_value == 3
        assert task_backends["default"].get_result(result.id).return_value == 3


@pytest.mark.timeout(60)
def test_other_queue(srv):
    with srv.settings():
        result = wait(tasks.send_email.enqueue("a@example.com"), 20)
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value == "sent to a@example.com"
        assert result.task.queue_name == "emails"


@pytest.mark.timeout(60)
def test_task_enqueued_signal_fires_in_enqueuer(srv):
    received = []

    def receiver(sender, task_result, **kwargs):
        received.append((sender, task_result.id, task_result.status, os.getpid()))

    task_enqueued.connect(receiver)
    try:
        with srv.settings():
            result = tasks.add.enqueue(1, 2)
    finally:
        task_enqueued.disconnect(receiver)
    assert received == [(ProcessPoolBackend, result.id, TaskResultStatus.READY, os.getpid())]


@pytest.mark.timeout(90)
def test_thread_pool_backend():
    server = start_server(options={"MAX_WORKERS": 3}, backend=THREAD_POOL)
    try:
        state = health(server)
        assert len(state["workers"]) == 1
        assert state["server"]["threads"] == 3
        with tasks_settings(server.address, {"MAX_WORKERS": 3}, backend=THREAD_POOL):
            assert isinstance(task_backends["default"], ThreadPoolBackend)
            results = [tasks.sleep.enqueue(1.0) for _ in range(3)]
            for result in results:
                wait(result, 20)
                assert result.status == TaskResultStatus.SUCCESSFUL
            # three 1 s sleeps ran at the same time in the one worker process
            assert max(r.started_at for r in results) < min(r.finished_at for r in results)
            assert len({r.worker_ids[0] for r in results}) == 1
            whoami = wait(tasks.whoami.enqueue(), 20)
            assert whoami.return_value["pid"] == state["workers"][0]["pid"]
    finally:
        server.stop()


# ---- connections: restarts and fork -----------------------------------------------------------

@pytest.mark.timeout(120)
def test_reconnect_after_server_restart():
    first = start_server(options={"WORKERS": 1})
    second = None
    try:
        with first.settings():
            old = wait(tasks.add.enqueue(1, 2), 20)
            assert old.return_value == 3
            first.stop()
            start = time.monotonic()
            with pytest.raises(ServerUnavailable):
                tasks.add.enqueue(1, 2)
            assert time.monotonic() - start < 5
            second = start_server(address=first.address, options={"WORKERS": 1})
            new = wait(tasks.add.enqueue(2, 3), 20)  # same process, same backend: reconnected
            assert new.return_value == 5
            with pytest.raises(TaskResultDoesNotExist):
                tasks.add.get_result(old.id)  # in-memory: the old server's results are gone
    finally:
        first.stop()
        if second is not None:
            second.stop()


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_connection_not_reused_across_fork(srv):
    with srv.settings():
        mine = wait(tasks.add.enqueue(1, 1), 20)
        theirs = wait(tasks.add.enqueue(2, 2), 20)  # our connection exists before the fork
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: use the backend hard while the parent does the same
            try:
                os.close(read_fd)
                ok = all(tasks.add.get_result(theirs.id).return_value == 4 for _ in range(300))
                child = wait(tasks.add.enqueue(10, 20), 20)
                payload = {"ok": ok, "value": child.return_value, "id": child.id}
                os.write(write_fd, json.dumps(payload).encode())
            except BaseException as exc:
                os.write(write_fd, json.dumps({"error": repr(exc)}).encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        try:
            # interleaved with the child's calls: a shared socket would mix up the replies
            assert all(tasks.add.get_result(mine.id).return_value == 2 for _ in range(300))
            chunks = []
            while chunk := os.read(read_fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(read_fd)
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        payload = json.loads(b"".join(chunks))
        assert payload.get("ok") is True, payload
        assert payload["value"] == 30
        # the parent's connection still works, and sees the child's result
        assert tasks.add.get_result(payload["id"]).return_value == 30
        assert tasks.add.get_result(mine.id).return_value == 2
