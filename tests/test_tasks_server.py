"""`manage.py tasks_server`: options, refusing a second server, and the SIGTERM drain."""

import os
import signal
import threading
import time

import psutil
import pytest

from django_tasks_shared.client.connection import StoreClient
from django_tasks_shared.client.options import derive_authkey
from helpers import SECRET_KEY, ServerProcess, ping, wait_until
from testproject import tasks

WORKER_LOST = "django_tasks_shared.exceptions.WorkerLost"


def blocking_wait(address, task_id, seconds, into):
    """Block in the server's `wait` (as `django_tasks_shared.wait` does): the final record
    arrives even if the server exits right after ending the task."""
    client = StoreClient(address, derive_authkey(SECRET_KEY, "default"), timeout=seconds + 10)

    def run():
        try:
            into[task_id] = client.call("wait", task_id, seconds)
        except Exception as exc:  # reported by the assertions below
            into[task_id] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def running_on(srv, *task_ids):
    snap = srv.client().call("health")
    current = {t["id"] for w in snap["workers"] for t in w["current_tasks"]}
    return snap if set(task_ids) <= current else None


@pytest.mark.timeout(60)
def test_sigterm_drains_within_grace_then_fails_the_rest_and_exits_0():
    grace = 3.0
    srv = ServerProcess(options={"WORKERS": 1}, args=["--workers", "2", "--grace", str(grace)])
    try:
        srv.wait_ready()
        with srv.settings():
            short = tasks.sleep.enqueue(1.5)
            long = tasks.sleep.enqueue(60)
            snap = wait_until(lambda: running_on(srv, short.id, long.id), 15,
                              message="both tasks running")
        assert len(snap["workers"]) == 2  # --workers overrides OPTIONS
        worker_pids = [w["pid"] for w in snap["workers"]]
        records = {}
        waiters = [blocking_wait(srv.address, task_id, 30, records)
                   for task_id in (short.id, long.id)]
        time.sleep(0.2)  # the waits are in the server

        signalled = time.monotonic()
        srv.popen.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert ping(srv.address) is not None  # still answering while it drains
        assert srv.client().call("health")["server"]["draining"] is True
        code = srv.popen.wait(grace + 10)
        took = time.monotonic() - signalled
        for waiter in waiters:
            waiter.join(10)
        output = srv.popen.stdout.read()
        print(f"\n[measure] SIGTERM with --grace {grace:g}: exit {code} after {took:.2f} s")

        assert code == 0, output
        assert grace <= took < grace + 4
        assert records[short.id]["status"] == "SUCCESSFUL", records[short.id]
        assert records[short.id]["return_value"] == 1.5
        lost = records[long.id]
        assert lost["status"] == "FAILED"
        assert lost["errors"][-1]["exception_class_path"] == WORKER_LOST
        assert f"shutdown grace {grace:g} s" in lost["errors"][-1]["traceback"]
        assert lost["finished_at"] - lost["started_at"] >= grace
        assert not os.path.exists(srv.address)  # socket file removed
        for pid in worker_pids:
            assert not psutil.pid_exists(pid)  # exited and reaped
        assert "task server stopped" in output
        assert ping(srv.address) is None
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_second_sigterm_skips_the_grace_period():
    srv = ServerProcess(options={"WORKERS": 1}, args=["--grace", "30"])
    try:
        srv.wait_ready()
        with srv.settings():
            long = tasks.sleep.enqueue(60)
            snap = wait_until(lambda: running_on(srv, long.id), 15, message="the task running")
        records = {}
        waiter = blocking_wait(srv.address, long.id, 30, records)
        time.sleep(0.2)
        started = time.monotonic()
        srv.popen.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        srv.popen.send_signal(signal.SIGTERM)
        code = srv.popen.wait(15)
        took = time.monotonic() - started
        waiter.join(10)
        assert code == 0
        assert took < 6
        assert records[long.id]["status"] == "FAILED"
        assert records[long.id]["errors"][-1]["exception_class_path"] == WORKER_LOST
        assert not psutil.pid_exists(snap["workers"][0]["pid"])
        assert not os.path.exists(srv.address)
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_a_second_server_on_the_same_address_is_refused():
    first = ServerProcess(options={"WORKERS": 1}, args=["--grace", "1"])
    try:
        first.wait_ready()
        pid = ping(first.address)
        second = ServerProcess(address=first.address, options={"WORKERS": 1})
        try:
            code = second.popen.wait(20)
            out = second.popen.stdout.read()
        finally:
            second.stop()
        assert code != 0
        assert "already running" in out and first.address in out
        assert ping(first.address) == pid  # the first one is untouched
    finally:
        first.stop()
    assert first.popen.returncode == 0
    assert not os.path.exists(first.address)

