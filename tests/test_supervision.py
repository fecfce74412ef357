"""Worker supervision, proven with real processes: a real `manage.py tasks_server`, real worker
processes, real signals. Every figure the failure table promises is measured here (run with -s
to see them printed)."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from django.tasks import TaskResultStatus

from django_tasks_shared import wait
from django_tasks_shared.exceptions import TimeLimitExceeded, WorkerLost
from helpers import MANAGE, child_env, running_server, temp_dir, wait_until
from testproject import tasks

WORKER_LOST = "django_tasks_shared.exceptions.WorkerLost"
TIME_LIMIT_EXCEEDED = "django_tasks_shared.exceptions.TimeLimitExceeded"


def health(srv):
    return srv.client().call("health")


def workers(srv):
    return {w["id"]: w for w in health(srv)["workers"]}


def ready_workers(srv):
    return {w["pid"] for w in health(srv)["workers"] if w["ready_at"] is not None}


def worker_running(srv, task_id, timeout=15.0):
    """The health entry of the worker running `task_id` (waits until one does)."""
    def find():
        for worker in health(srv)["workers"]:
            if any(t["id"] == task_id for t in worker["current_tasks"]):
                return worker
        return None
    return wait_until(find, timeout, message=f"a worker running task {task_id}")


def finished(srv, task_id, timeout=15.0, interval=0.01):
    client = srv.client()

    def done():
        record = client.call("get", task_id)
        return record if record["status"] in ("SUCCESSFUL", "FAILED") else None
    return wait_until(done, timeout, interval, message=f"task {task_id} to finish")


def run_health_command(address, *args, timeout=20, **env):
    return subprocess.run([sys.executable, MANAGE, "tasks_health", *args],
                          env=child_env(address, **env), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.timeout(60)
def test_sigkill_mid_task_fails_it_with_worker_lost_and_replaces_the_worker():
    with running_server({"WORKERS": 2}) as srv, srv.settings():
        wait_until(lambda: len(ready_workers(srv)) == 2, 15, message="2 ready workers")
        result = tasks.sleep.enqueue(30)
        victim = worker_running(srv, result.id)
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)

        record = finished(srv, result.id)
        detected = time.monotonic() - killed_at
        wait_until(lambda: len({w["pid"] for w in health(srv)["workers"]} - {victim["pid"]}) == 2,
                   10, 0.02, message="a replacement process")
        spawned = time.monotonic() - killed_at
        replacement = wait_until(
            lambda: ready_workers(srv) - {victim["pid"]} if len(ready_workers(srv) -
                                                                {victim["pid"]}) == 2 else None,
            10, 0.02, message="a replacement worker")
        replaced = time.monotonic() - killed_at
        print(f"\n[measure] SIGKILL -> task FAILED in {detected:.2f} s, replacement process "
              f"spawned in {spawned:.2f} s, ready (Django set up) in {replaced:.2f} s")

        assert record["status"] == "FAILED"
        error = record["errors"][-1]
        assert error["exception_class_path"] == WORKER_LOST
        assert str(victim["pid"]) in error["traceback"]
        assert "SIGKILL" in error["traceback"]
        assert detected < 2.0
        assert spawned < 2.0
        assert replaced < 5.0  # includes a fresh interpreter's django.setup() on a busy box
        assert victim["pid"] not in replacement

        result.refresh()
        assert result.status == TaskResultStatus.FAILED
        assert result.errors[0].exception_class is WorkerLost
        snap = health(srv)
        assert snap["counters"]["worker_lost"] == 1
        assert snap["counters"]["worker_restarts"] == 1
        assert not psutil.pid_exists(victim["pid"])  # reaped, not a zombie

        # the new worker takes tasks
        assert wait(tasks.add.enqueue(2, 2), timeout=15).return_value == 4


@pytest.mark.timeout(60)
def test_os_exit_inside_a_task_is_worker_lost_with_the_exit_code():
    with running_server({"WORKERS": 1}) as srv, srv.settings():
        result = tasks.die.enqueue(7)
        wait(result, timeout=15)
        assert result.status == TaskResultStatus.FAILED
        assert result.errors[0].exception_class is WorkerLost
        text = result.errors[0].traceback
        assert "exited with code 7" in text
        pid = int(text.split("(pid ")[1].split(")")[0])
        assert str(pid) in text
        # a replacement runs the next task (no back-off: the worker had started fine)
        started = time.monotonic()
        again = wait(tasks.whoami.enqueue(), timeout=15)
        print(f"\n[measure] after os._exit the next task ran in {time.monotonic() - started:.2f} s")
        assert again.status == TaskResultStatus.SUCCESSFUL
        assert again.return_value["pid"] != pid
        assert health(srv)["server"]["supervisor"]["crash_loop"] is False


@pytest.mark.timeout(60)
def test_time_limit_kills_the_worker_and_its_other_task_is_worker_lost():
    limit = 2.0
    with running_server({"WORKERS": 1, "THREADS": 2, "TIME_LIMIT": limit}) as srv, \
            srv.settings():
        wait_until(lambda: ready_workers(srv), 15, message="a ready worker")
        first = tasks.sleep.enqueue(30)
        victim = worker_running(srv, first.id)
        time.sleep(0.8)
        second = tasks.sleep.enqueue(30)  # same worker, other thread; well under the limit
        assert worker_running(srv, second.id)["pid"] == victim["pid"]

        one = finished(srv, first.id, timeout=limit + 10)
        two = finished(srv, second.id, timeout=10)
        latency = one["finished_at"] - one["started_at"] - limit
        print(f"\n[measure] TIME_LIMIT={limit:g} s: task failed {latency:.2f} s after its limit; "
              f"the other task on the worker ended {two['finished_at'] - one['finished_at']:.2f} s "
              "later")

        assert one["status"] == "FAILED"
        assert one["errors"][-1]["exception_class_path"] == TIME_LIMIT_EXCEEDED
        assert "TIME_LIMIT=2" in one["errors"][-1]["traceback"]
        assert 0 <= latency < 1.5
        assert two["status"] == "FAILED"
        assert two["errors"][-1]["exception_class_path"] == WORKER_LOST
        assert str(victim["pid"]) in two["errors"][-1]["traceback"]
        assert "TIME_LIMIT" in two["errors"][-1]["traceback"]

        first.refresh()
        assert first.errors[0].exception_class is TimeLimitExceeded
        wait_until(lambda: ready_workers(srv) and victim["pid"] not in ready_workers(srv), 10,
                   message="a replacement worker")
        assert not psutil.pid_exists(victim["pid"])
        snap = health(srv)
        assert snap["counters"]["timed_out"] == 1
        assert snap["counters"]["worker_lost"] == 1
        # the replacement still enforces nothing on short tasks
        assert wait(tasks.add.enqueue(1, 2), timeout=15).return_value == 3


@pytest.mark.timeout(60)
def test_memory_limit_retires_the_worker_after_its_task_and_nothing_fails():
    with running_server({"WORKERS": 1, "MAX_WORKER_MEMORY": 120}) as srv, srv.settings():
        pid = wait_until(lambda: ready_workers(srv), 15, message="a ready worker").pop()
        result = tasks.hog.enqueue(200, hold=2.0)
        retiring = wait_until(
            lambda: next((w for w in health(srv)["workers"] if w["retiring"]), None), 10, 0.1,
            message="the worker to be retired for its RSS")
        assert retiring["pid"] == pid
        assert retiring["rss_bytes"] > 120 * 2**20
        assert "MAX_WORKER_MEMORY=120" in retiring["retire_reason"]
        assert retiring["current_task"]["id"] == result.id

        wait(result, timeout=15)
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value == 200 * 2**20
        new = wait_until(lambda: ready_workers(srv) - {pid}, 10, message="a replacement")
        assert len(new) == 1
        snap = health(srv)
        assert snap["counters"]["failed"] == 0
        assert snap["counters"]["worker_lost"] == 0
        assert snap["counters"]["worker_restarts"] == 1
        fresh = wait_until(lambda: next((w for w in health(srv)["workers"]
                                         if w["rss_bytes"] is not None), None), 5,
                           message="the replacement's RSS sample")
        assert fresh["rss_bytes"] < 120 * 2**20 and not fresh["retiring"]
        wait_until(lambda: not psutil.pid_exists(pid), 5, message="the retired worker reaped")


@pytest.mark.timeout(60)
def test_memory_limit_below_a_fresh_worker_is_reported_not_respawned_in_a_loop():
    # A fresh worker (Django set up) has ~40 MiB RSS: a 10 MiB limit can never be met.
    with running_server({"WORKERS": 1, "MAX_WORKER_MEMORY": 10}) as srv, srv.settings():
        pid = wait_until(lambda: ready_workers(srv), 15, message="a ready worker").pop()
        snap = wait_until(
            lambda: (s := health(srv))["server"]["supervisor"]["memory_warning"] and s, 5,
            message="the memory warning")
        assert "below the RSS of a fresh worker" in snap["server"]["supervisor"]["memory_warning"]
        time.sleep(2.0)  # four ticks: a loop would have respawned it by now
        snap = health(srv)
        assert [w["pid"] for w in snap["workers"]] == [pid]
        assert snap["counters"]["worker_restarts"] == 0
        out = subprocess.run([sys.executable, MANAGE, "tasks_health"], env=srv.env,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "MAX_WORKER_MEMORY=10 MiB is below" in out.stdout
        # Tasks still run; a worker that ran one is recycled once (no failure), not in a loop.
        assert wait(tasks.add.enqueue(2, 2), timeout=15).return_value == 4


@pytest.mark.timeout(60)
def test_max_tasks_per_worker_recycles_workers_and_nothing_fails():
    with running_server({"WORKERS": 1, "MAX_TASKS_PER_WORKER": 2}) as srv, srv.settings():
        results = [tasks.whoami.enqueue() for _ in range(6)]
        for result in results:
            wait(result, timeout=20)
        assert [r.status for r in results] == [TaskResultStatus.SUCCESSFUL] * 6
        pids = [r.return_value["pid"] for r in results]
        assert len(set(pids)) == 3, pids
        assert all(pids.count(pid) == 2 for pid in pids)
        snap = health(srv)
        assert snap["counters"]["failed"] == 0
        assert snap["counters"]["succeeded"] == 6
        assert snap["counters"]["worker_restarts"] >= 2


@pytest.mark.timeout(90)
def test_worker_that_cannot_start_backs_off_and_health_shows_the_reason():
    marker = os.path.join(temp_dir(prefix="dts-"), "break-workers")
    env = {"DJANGO_SETTINGS_MODULE": "testproject.broken_settings",
           "TASKS_BREAK_MARKER": marker}
    with running_server({"WORKERS": 2}, env=env) as srv:
        survivor, pid = sorted(wait_until(lambda: len(ready_workers(srv)) == 2 and
                                          ready_workers(srv), 15, message="2 ready workers"))
        open(marker, "w").close()  # from now on every new worker dies in django.setup()
        # Only one worker dies: the other, started before the break, stays ready. That must
        # not reset the back-off (only a worker that starts AFTER a failure proves a fix).
        os.kill(pid, signal.SIGKILL)
        broke_at, broke_wall = time.monotonic(), time.time()

        # Watch until the third failure in a row. Start-up time depends on the machine's load,
        # so the proof is not a count per second but the gaps: after failure k the next attempt
        # waits retry_in(k) = 0.5 * 2**(k-1) s, where a tight loop would respawn at the next
        # tick (0.5 s).
        # Server-side wall-clock stamps: a worker's started_at, a failure's "at".
        spawns, failures = {}, {}  # pid -> started_at; streak -> (at, retry_in)
        deadline = broke_at + 40
        while 3 not in failures and time.monotonic() < deadline:
            snap = health(srv)
            for worker in snap["workers"]:
                spawns.setdefault(worker["pid"], worker["started_at"] - broke_wall)
            failure = snap["server"]["supervisor"]["last_failure"]
            if failure and failure["streak"] not in failures:
                failures[failure["streak"]] = (failure["at"] - broke_wall, failure["retry_in"])
            time.sleep(0.02)
        attempts = sorted(t for p, t in spawns.items() if p not in (pid, survivor))
        print(f"\n[measure] back-off: start attempts at {[round(t, 2) for t in attempts]} s, "
              f"failures seen (at s, retry_in s): "
              f"{ {k: (round(t, 2), r) for k, (t, r) in failures.items()} }")
        assert [failures[k][1] for k in (1, 2, 3)] == [0.5, 1.0, 2.0]
        for k in (1, 2):  # the attempt after failure k came no sooner than its back-off
            next_attempt = min(t for t in attempts if t > failures[k][0])
            gap = next_attempt - failures[k][0]
            print(f"[measure] failure {k} -> next start attempt after {gap:.2f} s "
                  f"(back-off {failures[k][1]:g} s)")
            assert gap >= failures[k][1] - 0.01
        assert len(attempts) == 3  # one per failure: never a burst

        sup = snap["server"]["supervisor"]
        assert sup["crash_loop"] is True
        assert "broken settings for the test" in sup["last_failure"]["reason"]
        assert "exited with code 3" in sup["last_failure"]["exit"]

        human = run_health_command(srv.address)
        assert human.returncode == 1, human.stdout + human.stderr
        assert "DEGRADED" in human.stdout
        assert "back-off" in human.stdout
        assert "RuntimeError: broken settings for the test" in human.stdout
        as_json = run_health_command(srv.address, "--json")
        assert as_json.returncode == 1
        doc = json.loads(as_json.stdout)
        assert doc["status"] == "degraded"
        assert any("broken settings for the test" in r for r in doc["reasons"])

        # Fixed: the next attempt succeeds and health is healthy again.
        os.unlink(marker)
        wait_until(lambda: len(ready_workers(srv)) == 2, 20, 0.1, message="2 workers after the fix")
        wait_until(lambda: health(srv)["server"]["supervisor"]["crash_loop"] is False, 5,
                   message="the crash loop to clear")
        assert run_health_command(srv.address).returncode == 0
    output = srv.output()
    assert "failed to start" in output and "retrying in 1.0 s" in output


OWNER = r"""
import json, sys, time
import django
django.setup()
from django.tasks import task_backends
from testproject import tasks
result = tasks.sleep.enqueue(60)   # starts the embedded server (no ADDRESS)
backend = task_backends["default"]
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    snap = backend.health()
    if snap["running"] == 1 and len(snap["workers"]) == 2:
        break
    time.sleep(0.05)
print(json.dumps({"address": backend.config.address, "server": snap["server"]["pid"],
                  "workers": [w["pid"] for w in snap["workers"]]}), flush=True)
time.sleep(120)
"""


@pytest.mark.timeout(60)
def test_sigkill_of_the_embedded_owner_leaves_no_process_behind():
    runtime = temp_dir(prefix="dts-rt-")
    env = child_env(None, {"WORKERS": 2}, XDG_RUNTIME_DIR=runtime,
                    TASKS_SECRET_KEY="owner-death-test-" + os.urandom(8).hex())
    owner = subprocess.Popen([sys.executable, "-c", OWNER], env=env, stdout=subprocess.PIPE,
                             text=True)
    try:
        info = json.loads(owner.stdout.readline())
        family = psutil.Process(owner.pid).children(recursive=True)
        pids = {p.pid for p in family}
        assert {info["server"], *info["workers"]} <= pids
        assert info["address"].startswith(runtime)

        killed_at = time.monotonic()
        owner.send_signal(signal.SIGKILL)
        owner.wait(5)

        def gone(proc):
            try:
                # Exited and orphaned: only init (pid 1 here, slow to reap) can reap it. A
                # zombie whose parent is still one of ours would be a child we failed to reap.
                return proc.status() == psutil.STATUS_ZOMBIE and proc.ppid() not in pids
            except psutil.NoSuchProcess:
                return True
        wait_until(lambda: all(gone(p) for p in family), 10, 0.02,
                   message=f"every process of the dead owner to exit: {pids}")
        print(f"\n[measure] embedded owner SIGKILLed: its {len(family)} descendants "
              f"(server + workers) exited within {time.monotonic() - killed_at:.2f} s")
        wait_until(lambda: not os.path.exists(info["address"]), 5,
                   message="the embedded socket file to be removed")
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(5)


@pytest.mark.timeout(20)
def test_total_rss_of_an_unreaped_worker_is_none_not_zero():
    """A worker that exited and is not reaped yet (a zombie) has an RSS of 0: the sampler calls
    it gone (None), so health never shows a dying worker as "0 B" and MAX_WORKER_MEMORY never
    reads 0 for it."""
    from django_tasks_shared.supervision.rss import total_rss

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    try:
        proc = psutil.Process(child.pid)
        assert total_rss(proc, []) > 0  # alive: its RSS
        wait_until(lambda: proc.status() == psutil.STATUS_ZOMBIE, timeout=10)
        assert proc.memory_info().rss == 0  # what psutil reads for a zombie
        assert total_rss(proc, []) is None
    finally:
        child.kill()
        child.wait(timeout=10)
