"""`manage.py tasks_health`: status rules (unit), the report, --json, --watch and exit codes
against real servers, and that it never starts a server."""

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from django_tasks_shared import __version__, health
from helpers import MANAGE, ServerProcess, child_env, ping, short_socket_path, temp_dir, wait_until
from testproject import tasks

TOP_LEVEL = {"status", "server", "queues", "results", "counters", "workers"}
WORKER_FIELDS = {"id", "pid", "state", "rss_bytes", "cpu_percent", "tasks_done", "current_task"}


def run_health(address, *args, options=None, timeout=20, **env):
    started = time.monotonic()
    proc = subprocess.run([sys.executable, MANAGE, "tasks_health", *args],
                          env=child_env(address, options, **env), capture_output=True,
                          text=True, timeout=timeout)
    proc.elapsed = time.monotonic() - started
    return proc


# ---- status rules and rendering (no processes) ---------------------------------------------

def snapshot(**changes):
    now = time.time()
    snap = {
        "server": {"pid": 100, "address": "/run/t.sock", "version": "0.1.0", "python": "3.13.0",
                   "uptime": 75.0, "started_at": now - 75, "draining": False, "alias": "default",
                   "workers_expected": 2, "threads": 2, "time_limit": 30.0,
                   "max_worker_memory": None, "embedded": False,
                   "queues": ["default", "emails"],
                   "supervisor": {"workers_expected": 2, "workers_alive": 2,
                                  "crash_loop": False, "next_spawn_in": None,
                                  "last_failure": None}},
        "queues": {"default": {"ready": 3, "deferred": 1}},
        "pending": 4, "running": 2,
        "results": {"stored": 10, "max": 1000, "ttl": None, "evicted": 0, "expired": 0},
        "limits": {"max_queue": 100, "max_tasks_per_worker": None},
        "counters": {"enqueued": 16, "succeeded": 9, "failed": 1, "worker_lost": 1,
                     "timed_out": 0, "evicted": 0, "expired": 0, "rejected_full": 0,
                     "worker_restarts": 1},
        "workers": [
            {"id": "default-aaaa1111", "pid": 4242, "state": "busy", "started_at": now - 70,
             "ready_at": now - 69, "tasks_done": 7, "retiring": False, "retire_reason": None,
             "failure": None, "rss_bytes": 52_000_000, "cpu_percent": 99.5, "uptime": 70.0,
             "current_tasks": [
                 {"id": "A" * 32, "name": "app.tasks.long_report", "running_for": 12.25},
                 {"id": "B" * 32, "name": "app.tasks.x", "running_for": 0.5}],
             "current_task": {"id": "A" * 32, "name": "app.tasks.long_report",
                              "running_for": 12.25}},
            {"id": "default-bbbb2222", "pid": 77, "state": "idle", "started_at": now - 3,
             "ready_at": now - 2, "tasks_done": 2, "retiring": True,
             "retire_reason": "MAX_TASKS_PER_WORKER=3 reached", "failure": None,
             "rss_bytes": None, "cpu_percent": None, "uptime": 3.0, "current_tasks": [],
             "current_task": None},
        ],
    }
    for key, value in changes.items():
        snap[key] = value
    return snap


@pytest.mark.timeout(10)
def test_status_healthy_and_each_degraded_reason():
    assert health.evaluate(snapshot()) == ("healthy", [])

    one_dead = snapshot()
    one_dead["workers"] = one_dead["workers"][:1]
    status, reasons = health.evaluate(one_dead)
    assert status == "degraded" and reasons == ["1 of 2 worker process(es) alive"]

    looping = snapshot()
    looping["server"]["supervisor"].update(crash_loop=True, next_spawn_in=3.5, last_failure={
        "reason": "ImportError: No module named 'oops'", "streak": 3, "retry_in": 4.0})
    status, reasons = health.evaluate(looping)
    assert status == "degraded"
    assert "back-off" in reasons[0] and "ImportError: No module named 'oops'" in reasons[0]
    assert "3 failure(s) in a row" in reasons[0] and "next try in 3.5 s" in reasons[0]

    assert health.evaluate(snapshot(pending=90))[0] == "healthy"   # exactly 90 %: not above
    status, reasons = health.evaluate(snapshot(pending=91))
    assert status == "degraded" and "MAX_QUEUE=100" in reasons[0]
    assert health.evaluate(snapshot(pending=10**6, limits={"max_queue": None}))[0] == "healthy"

    draining = snapshot()
    draining["server"]["draining"] = True
    assert health.evaluate(draining)[0] == "degraded"
    assert health.EXIT_CODES == {"healthy": 0, "degraded": 1, "unreachable": 2}


@pytest.mark.timeout(10)
def test_report_document_and_aligned_workers_table():
    doc = health.report(snapshot())
    assert TOP_LEVEL <= set(doc)
    assert doc["queues"] == {"default": {"ready": 3, "deferred": 1},
                             "emails": {"ready": 0, "deferred": 0}}  # configured, idle queue
    for worker in doc["workers"]:
        assert WORKER_FIELDS <= set(worker)
    json.dumps(doc)

    text = health.render(doc)
    assert text.splitlines()[0] == "django-tasks-shared 0.1.0 - backend 'default': HEALTHY"
    for needle in ("pid 100", "/run/t.sock", "up 1m15s", "version 0.1.0",
                   "default: 3 ready, 1 deferred", "emails: 0 ready, 0 deferred", "running   2",
                   "10 stored (max 1000)", "0 evicted", "enqueued 16", "succeeded 9", "failed 1",
                   "worker lost 1", "timed out 0", "cancelled 0", "restarts 1", "TIME_LIMIT 30 s",
                   "MAX_QUEUE 100", "retiring, MAX_TASKS_PER_WORKER=3 reached"):
        assert needle in text, needle
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ID "))
    head, first, extra, second = lines[header:header + 4]
    # right-aligned numeric columns end where their header ends; text columns start with it
    for title, value, row in (("PID", "4242", first), ("PID", "77", second),
                              ("RSS", "49.6 MiB", first), ("CPU %", "99.5", first),
                              ("DONE", "7", first), ("DONE", "2", second)):
        end = head.index(title) + len(title)
        assert row[end - len(value):end] == value, (title, row)
    task_col = head.index("CURRENT TASK")
    assert first[task_col:].startswith("app.tasks.long_report AAAAAAAAAAAA 12.2s")
    assert extra[task_col:].startswith("app.tasks.x BBBBBBBBBBBB 0.5s")  # second thread's task
    assert extra[:task_col].strip() == ""
    assert second[head.index("STATE"):].startswith("idle (retiring)")
    assert second[head.index("CURRENT TASK"):].startswith("-")
    assert "ago)" in first[head.index("STARTED"):]

    down = health.unreachable_report("/run/t.sock", "no server is listening there")
    assert TOP_LEVEL <= set(down) and down["workers"] == []
    assert "UNREACHABLE" in health.render(down)
    assert "/run/t.sock" in health.render(down)


@pytest.mark.timeout(10)
def test_attempt_progress_and_new_counters_in_the_report():
    snap = snapshot()
    snap["server"]["max_task_memory"] = 300
    snap["counters"].update(retried=4, memory_exceeded=1)
    snap["workers"][0]["current_tasks"] = [
        {"id": "A" * 32, "name": "app.tasks.import_rows", "running_for": 3.0, "attempt": 2,
         "progress": {"done": 40, "total": 100, "note": "x" * 60}}]
    snap["workers"][0]["current_task"] = snap["workers"][0]["current_tasks"][0]
    doc = health.report(snap)
    assert doc["workers"][0]["current_task"]["progress"]["done"] == 40
    text = health.render(doc)
    for needle in ("MAX_TASK_MEMORY 300 MiB", "retried 4", "over memory 1",
                   "app.tasks.import_rows AAAAAAAAAAAA 3.0s (attempt 2) [done=40, total=100, note="
                   + "x" * 14 + "…]"):  # progress cut to 40 characters
        assert needle in text, needle
    assert health.progress_text({"a": 1}) == "a=1" and health.progress_text(None) == ""


# ---- the command against real processes ----------------------------------------------------

@pytest.mark.timeout(90)
def test_healthy_then_degraded_report_json_watch_and_wrong_authkey():
    srv = ServerProcess(options={"WORKERS": 2, "MAX_QUEUE": 4}, args=["--grace", "1"])
    try:
        srv.wait_ready()
        with srv.settings():
            running = tasks.sleep.enqueue(20)
            wait_until(lambda: srv.client().call("health")["running"] == 1, 15,
                       message="the task to run")
            wait_until(lambda: all(w["rss_bytes"] for w in srv.client().call("health")["workers"]),
                       5, message="psutil samples")

            human = run_health(srv.address)
            assert human.returncode == 0, human.stdout + human.stderr
            out = human.stdout
            print("\n" + out)
            assert out.startswith(
                f"django-tasks-shared {__version__} - backend 'default': HEALTHY")
            server_pid = srv.client().call("ping")
            for needle in (f"pid {server_pid}", srv.address, f"version {__version__}",
                           "MAX_QUEUE 4",
                           "default: 0 ready, 0 deferred", "emails: 0 ready, 0 deferred",
                           "running   1", "enqueued 1", "workers   2 of 2",
                           f"testproject.tasks.sleep {running.id[:12]}",
                           "of MAX_CONNECTIONS 4096"):
                assert needle in out, needle
            # the busy worker's thread, the test's client and the tasks_health process at least
            held = int(out.split("connections ", 1)[1].split()[0])
            assert held >= 3, out
            assert "ID" in out and "RSS" in out and "CPU %" in out and "STARTED" in out

            as_json = run_health(srv.address, "--json")
            assert as_json.returncode == 0, as_json.stderr
            doc = json.loads(as_json.stdout)
            print(json.dumps(doc, indent=1)[:1500])
            assert TOP_LEVEL <= set(doc)
            assert doc["status"] == "healthy"
            assert doc["server"]["pid"] == server_pid
            assert doc["server"]["address"] == srv.address
            assert doc["results"]["stored"] == 0 and "evicted" in doc["results"]
            assert doc["counters"]["enqueued"] == 1
            assert len(doc["workers"]) == 2
            for worker in doc["workers"]:
                assert WORKER_FIELDS <= set(worker)
                assert isinstance(worker["pid"], int) and worker["rss_bytes"] > 0
            busy = [w for w in doc["workers"] if w["current_task"]]
            assert len(busy) == 1 and busy[0]["state"] == "busy"
            assert set(busy[0]["current_task"]) == {"id", "name", "running_for", "attempt",
                                                     "progress"}
            assert busy[0]["current_task"]["id"] == running.id
            assert busy[0]["current_task"]["name"] == "testproject.tasks.sleep"
            assert busy[0]["current_task"]["running_for"] > 0
            idle = [w for w in doc["workers"] if not w["current_task"]]
            assert idle[0]["current_task"] is None

            # Queue above 90 % of MAX_QUEUE: degraded, exit 1.
            later = tasks.add.using(run_after=timezone.now() + timedelta(minutes=10))
            for _ in range(4):
                later.enqueue(1, 1)
            degraded = run_health(srv.address)
            print(degraded.stdout)
            assert degraded.returncode == 1
            assert "DEGRADED" in degraded.stdout.splitlines()[0]
            assert "4 pending task(s), above 90% of MAX_QUEUE=4" in degraded.stdout
            assert "default: 0 ready, 4 deferred" in degraded.stdout
            degraded_json = run_health(srv.address, "--json")
            assert degraded_json.returncode == 1
            doc = json.loads(degraded_json.stdout)
            assert doc["status"] == "degraded"
            assert doc["queues"]["default"] == {"ready": 0, "deferred": 4}
            assert doc["reasons"] == ["4 pending task(s), above 90% of MAX_QUEUE=4"]

        # --watch: refreshes until interrupted, keeps the exit status of the last probe
        watch = subprocess.Popen([sys.executable, MANAGE, "tasks_health", "--watch", "0.3"],
                                 env=child_env(srv.address), stdout=subprocess.PIPE, text=True)
        try:
            # Interrupted once it has printed two reports, not after a fixed sleep: under load
            # (CI runs several suites at once) Django's start-up alone can take seconds.
            out, deadline = "", time.monotonic() + 30
            while out.count("DEGRADED") < 2 and time.monotonic() < deadline:
                if select.select([watch.stdout], [], [], 1.0)[0]:
                    line = watch.stdout.readline()
                    if not line:
                        break
                    out += line
            watch.send_signal(signal.SIGINT)
            rest, _ = watch.communicate(timeout=10)
            out += rest
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait(5)
        assert watch.returncode == 1
        assert out.count("DEGRADED") >= 2

        # Wrong authkey: unreachable, with the reason.
        wrong = run_health(srv.address, TASKS_SECRET_KEY="another-secret-key-" + "x" * 20)
        assert wrong.returncode == 2
        assert "authkey" in wrong.stdout and srv.address in wrong.stdout
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_unreachable_when_nothing_listens():
    address = short_socket_path()
    human = run_health(address)
    assert human.returncode == 2
    assert "UNREACHABLE" in human.stdout
    assert address in human.stdout and "no server is listening there" in human.stdout
    as_json = run_health(address, "--json")
    assert as_json.returncode == 2
    doc = json.loads(as_json.stdout)
    assert TOP_LEVEL <= set(doc)
    assert doc["status"] == "unreachable"
    assert doc["server"]["address"] == address
    assert "no server is listening there" in doc["server"]["error"]
    assert address in as_json.stderr  # the message for logs / probes
    assert not os.path.exists(address)


@pytest.mark.timeout(60)
def test_unreachable_within_5_seconds_when_the_server_does_not_answer():
    address = short_socket_path()
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stalled.bind(address)
        stalled.listen(8)  # connections queue up; nobody ever answers the handshake
        result = run_health(address, "--json")
    finally:
        stalled.close()
    print(f"\n[measure] tasks_health against a server that never answers: exit "
          f"{result.returncode} after {result.elapsed:.2f} s (process start included)")
    assert result.returncode == 2
    assert result.elapsed < 5.0
    doc = json.loads(result.stdout)
    assert doc["status"] == "unreachable"
    assert "no answer within" in doc["server"]["error"]
    assert address in result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["embedded", "autostart"])
def test_never_starts_a_server(mode):
    runtime = temp_dir(prefix="dts-rt-")
    secret = "never-start-test-" + os.urandom(8).hex()
    address = None if mode == "embedded" else short_socket_path()
    options = {"WORKERS": 1} if mode == "embedded" else {"WORKERS": 1, "AUTOSTART": True}
    result = run_health(address, "--json", options=options, XDG_RUNTIME_DIR=runtime,
                        TASKS_SECRET_KEY=secret)
    assert result.returncode == 2, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["status"] == "unreachable"
    if mode == "embedded":
        address = doc["server"]["address"]
        assert address.startswith(runtime)
    time.sleep(0.5)  # a started server would be listening by now
    assert not os.path.exists(address)
    sockets = [name for _, _, names in os.walk(runtime) for name in names
               if name.endswith(".sock")]
    assert sockets == []
    with contextlib.suppress(Exception):
        assert ping(address) is None
