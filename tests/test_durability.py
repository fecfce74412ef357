"""STATE_DIR, reload and MAX_PAYLOAD with real processes: a real `tasks_server` is stopped
(SIGTERM) or killed (SIGKILL) mid-stream and a new one started on the same directory; task code
is changed on disk and reloaded; oversized payloads are refused."""

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from datetime import timedelta

import psutil
import pytest
from django.tasks.exceptions import TaskResultDoesNotExist
from django.utils import timezone

from django_tasks_shared import wait, wait_all
from django_tasks_shared.exceptions import PayloadTooLarge
from helpers import MANAGE, TESTS_DIR, ServerProcess, child_env, ping, temp_dir, wait_until
from testproject import durable_tasks, tasks

WORKER_LOST = "django_tasks_shared.exceptions.WorkerLost"


def soon(seconds):
    return timezone.now() + timedelta(seconds=seconds)


def ledger_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().split()


def kill_server_and_orphans(srv):
    """SIGKILL the server (a crash); its workers exit on their own (their parent is gone):
    wait for them by pid, and kill any that does not."""
    pids = [w["pid"] for w in srv.client().call("health")["workers"]]
    srv.popen.kill()
    srv.popen.wait(10)
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        proc.kill()
    assert not alive, "workers outlived their server by more than 5 s"


@pytest.mark.timeout(90)
def test_sigterm_snapshot_then_a_new_server_keeps_pending_and_results():
    state_dir = os.path.join(temp_dir(), "state")
    ledger = os.path.join(temp_dir(), "ledger")
    options = {"WORKERS": 1, "STATE_DIR": state_dir}
    srv = ServerProcess(options=options, args=["--grace", "5"])
    try:
        srv.wait_ready()
        with srv.settings():
            done = [durable_tasks.record.enqueue(ledger, f"done{i}") for i in range(3)]
            failed = tasks.fail.enqueue("boom")
            wait_all([*done, failed], timeout=20)
            later = durable_tasks.record.using(run_after=soon(3))
            pending = [later.enqueue(ledger, f"later{i}") for i in range(5)]
        srv.popen.send_signal(signal.SIGTERM)
        assert srv.popen.wait(20) == 0
        assert sorted(os.listdir(state_dir)) == ["lock", "snapshot-00000002.state"]
    finally:
        srv.stop()

    again = ServerProcess(address=srv.address, options=options, args=["--grace", "5"])
    try:
        again.wait_ready()
        with again.settings():
            for before in [*done, failed]:
                after = tasks.add.get_backend().get_result(before.id)
                for attr in ("status", "enqueued_at", "started_at", "finished_at", "errors",
                             "worker_ids", "args"):
                    assert getattr(after, attr) == getattr(before, attr), attr
            assert failed.errors[0].exception_class_path == "builtins.ValueError"
            health = again.client().call("health")
            assert health["state"]["restored"] == {"pending": 5, "results": 4,
                                                   "interrupted": 0}
            wait_all(pending, timeout=30)
            assert all(r.status == "SUCCESSFUL" for r in pending)
        lines = ledger_lines(ledger)
        assert sorted(lines) == sorted([f"done{i}" for i in range(3)] +
                                       [f"later{i}" for i in range(5)])  # each exactly once
    finally:
        again.stop()


@pytest.mark.timeout(120)
def test_sigkill_mid_stream_loses_no_task_and_runs_none_twice():
    state_dir = os.path.join(temp_dir(), "state")
    ledger = os.path.join(temp_dir(), "ledger")
    options = {"WORKERS": 2, "STATE_DIR": state_dir, "FSYNC": "everysec"}
    srv = ServerProcess(options=options)
    try:
        srv.wait_ready()
        with srv.settings():
            slow = durable_tasks.record.using(priority=10).enqueue(ledger, "slow", 60)
            results = [durable_tasks.record.enqueue(ledger, f"t{i}", 0.05) for i in range(60)]
            wait_until(lambda: len(ledger_lines(ledger)) >= 10, 30, message="some tasks done")
            assert tasks.add.get_backend().get_result(slow.id).status == "RUNNING"
        kill_server_and_orphans(srv)
    finally:
        srv.stop()

    again = ServerProcess(address=srv.address, options=options)
    try:
        again.wait_ready()
        with again.settings():
            backend = tasks.add.get_backend()
            for result in [slow, *results]:
                backend.get_result(result.id)  # every acknowledged enqueue is there
            wait_all(results, timeout=60)
            slow.refresh()
        restored = again.client().call("health")["state"]["restored"]
        assert slow.status == "FAILED"
        assert slow.errors[-1].exception_class_path == WORKER_LOST
        assert "died while this task ran" in slow.errors[-1].traceback
        lines = ledger_lines(ledger)
        lost = [r for r in results if r.status == "FAILED"]
        for result in lost:  # running at the kill: ended WorkerLost, at most once
            assert result.errors[-1].exception_class_path == WORKER_LOST
        assert restored["interrupted"] == len(lost) + 1
        for i, result in enumerate(results):
            if result.status == "SUCCESSFUL":
                assert lines.count(f"t{i}") == 1
            else:
                assert lines.count(f"t{i}") <= 1
        assert len(lines) == len(set(lines))  # nothing ran twice
    finally:
        again.stop()


DEPLOY_V1 = '''from django.tasks import task

VERSION = "v1"


@task
def version(seconds=0.0):
    import time
    time.sleep(seconds)
    return VERSION
'''


def deploy_module(prefix):
    """A task module in a fresh directory on sys.path (the caller removes it): (dir, name, path)."""
    tmp = temp_dir()
    module = f"{prefix}_{os.getpid()}_{int(time.time() * 1000) % 100000}"
    path = os.path.join(tmp, f"{module}.py")
    with open(path, "w") as f:
        f.write(DEPLOY_V1)
    sys.path.insert(0, tmp)
    return tmp, module, path


def deploy_server(tmp, options, extra_apps=""):
    env = {"PYTHONPATH": os.pathsep.join([tmp, TESTS_DIR, *sys.path]),
           "PYTHONDONTWRITEBYTECODE": "1", "TASKS_EXTRA_APPS": extra_apps}
    return ServerProcess(options=options, env=env, args=["--grace", "20"])


def run_command(srv, *args, timeout=60, **env):
    return subprocess.run([sys.executable, MANAGE, *args], env={**srv.env, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(120)
def test_reload_runs_the_new_code_keeps_the_queue_and_never_has_zero_workers():
    tmp, module, path = deploy_module("deploy")
    srv = deploy_server(tmp, {"WORKERS": 2})
    try:
        srv.wait_ready()
        deployed = __import__(module)
        with srv.settings():
            first = wait(deployed.version.enqueue(), 20)
            assert first.return_value == "v1"
            in_flight = deployed.version.enqueue(2.0)  # runs on an old worker during the reload
            wait_until(lambda: in_flight.refresh() or in_flight.status == "RUNNING", 15,
                       message="a task running")
            queued = [tasks.add.enqueue(i, i) for i in range(30)]
            with open(path, "w") as f:
                f.write(DEPLOY_V1.replace('"v1"', '"v2, deployed"'))

            fewest = []
            stop = threading.Event()

            def watch():  # workers able to take a task, sampled through the reload
                client = srv.client()
                while not stop.is_set():
                    workers = client.call("health")["workers"]
                    fewest.append(sum(w["ready_at"] is not None and not w["retiring"]
                                      for w in workers))
                    time.sleep(0.02)

            watcher = threading.Thread(target=watch)
            watcher.start()
            try:
                done = run_command(srv, "tasks_reload", "--wait")
            finally:
                stop.set()
                watcher.join(10)
            assert done.returncode == 0, done.stderr
            assert "generation 2 serving" in done.stdout
            assert min(fewest) >= 1, fewest

            wait_all([in_flight, *queued], timeout=30)
            assert in_flight.status == "SUCCESSFUL" and in_flight.return_value == "v1"
            assert [r.return_value for r in queued] == [2 * i for i in range(30)]
            assert wait(deployed.version.enqueue(), 20).return_value == "v2, deployed"
        health = srv.client().call("health")
        assert health["server"]["generation"] == 2
        assert health["server"]["reloading"] is False
        assert health["server"]["last_reload"]["ok"] is True
        assert [w["generation"] for w in health["workers"]] == [2, 2]
        assert health["counters"]["failed"] == 0

        srv.popen.send_signal(signal.SIGHUP)  # the systemd ExecReload= way
        wait_until(lambda: (s := srv.client().call("health")["server"])["generation"] == 3
                   and not s["reloading"], 30, message="generation 3 after SIGHUP")
        report = run_command(srv, "tasks_health")
        assert "reload    generation 3; last reload finished" in report.stdout
    finally:
        sys.path.remove(tmp)
        srv.stop()


@pytest.mark.timeout(120)
def test_a_reload_whose_workers_cannot_start_fails_and_the_old_ones_keep_serving():
    tmp = temp_dir()
    app = f"deployapp_{os.getpid()}_{int(time.time() * 1000) % 100000}"
    os.makedirs(os.path.join(tmp, app))
    init = os.path.join(tmp, app, "__init__.py")
    with open(init, "w") as f:
        f.write("")
    sys.path.insert(0, tmp)
    srv = deploy_server(tmp, {"WORKERS": 1}, extra_apps=app)
    try:
        srv.wait_ready()
        wait_until(lambda: all(w["ready_at"] for w in srv.client().call("health")["workers"]),
                   20, message="the first worker ready")
        with open(init, "w") as f:
            f.write("raise ImportError('this deploy is broken')\n")
        # (The command itself runs without the broken app: only the workers import it.)
        done = run_command(srv, "tasks_reload", "--wait", "--backend", "default",
                           TASKS_EXTRA_APPS="")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "this deploy is broken" in done.stderr
        health = srv.client().call("health")
        assert health["server"]["generation"] == 1
        assert health["server"]["last_reload"]["ok"] is False
        with srv.settings():
            assert wait(tasks.add.enqueue(2, 3), 20).return_value == 5  # old workers serve
        report = run_command(srv, "tasks_health", TASKS_EXTRA_APPS="")
        assert report.returncode == 0, report.stdout  # healthy: generation 1 serves
        assert "FAILED: new worker" in report.stdout
    finally:
        sys.path.remove(tmp)
        srv.stop()


@pytest.mark.timeout(60)
def test_tasks_reload_never_starts_a_server_and_says_unreachable():
    address = os.path.join(temp_dir(), "nobody.sock")
    env = child_env(address, {"WORKERS": 1})
    done = subprocess.run([sys.executable, MANAGE, "tasks_reload", "--wait"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "unavailable" in done.stderr
    assert ping(address) is None


@pytest.mark.timeout(90)
def test_max_payload_refuses_big_arguments_fails_big_results_and_drops_big_messages():
    srv = ServerProcess(options={"WORKERS": 1, "MAX_PAYLOAD": 100_000})
    try:
        srv.wait_ready()
        with srv.settings():
            with pytest.raises(PayloadTooLarge, match="MAX_PAYLOAD=100000; nothing was "):
                tasks.add.enqueue("x" * 200_000, "y")
            assert srv.client().call("health")["counters"]["enqueued"] == 0  # nothing stored
            big = wait(durable_tasks.big_return.enqueue(200_000), 20)
            assert big.status == "FAILED"
            assert big.errors[0].exception_class_path.endswith("PayloadTooLarge")
            small = wait(durable_tasks.big_return.enqueue(1000), 20)
            assert small.status == "SUCCESSFUL"

        server = psutil.Process(srv.popen.pid)
        rss = server.memory_info().rss
        client = srv.client()
        client.call("ping")
        fd = client._local.conn.fileno()
        # Announce a 500 MB message and send some of it: the server drops the connection
        # without allocating the body.
        sock = socket.socket(fileno=os.dup(fd))
        sock.sendall(struct.pack("!i", 500_000_000) + b"\0" * 1000)
        sock.settimeout(5)
        try:
            assert sock.recv(1) == b""  # closed by the server
        except ConnectionResetError:
            pass
        sock.close()
        client.close()
        assert server.memory_info().rss - rss < 20 * 2**20
        assert ping(srv.address) is not None
        srv.stop()
        assert "a message of 500000000 bytes, over the limit" in srv.popen.stdout.read()
    finally:
        srv.stop()


@pytest.mark.timeout(90)
def test_damaged_state_is_refused_kept_and_discard_state_moves_it_aside():
    state_dir = os.path.join(temp_dir(), "state")
    options = {"WORKERS": 1, "STATE_DIR": state_dir}
    srv = ServerProcess(options=options)
    try:
        srv.wait_ready()
        with srv.settings():
            kept = wait(tasks.add.enqueue(1, 2), 20)
    finally:
        srv.stop()
    snapshot = os.path.join(state_dir, "snapshot-00000002.state")
    with open(snapshot, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0xFF
        f.seek(0)
        f.write(data)

    refused = ServerProcess(address=srv.address, options=options)
    try:
        assert refused.popen.wait(30) != 0
        out = refused.popen.stdout.read()
    finally:
        refused.stop()
    assert "refusing to start" in out and snapshot in out and "offset" in out
    assert "--discard-state" in out
    with open(snapshot, "rb") as f:
        assert f.read() == data  # kept as it was
    assert ping(srv.address) is None

    fresh = ServerProcess(address=srv.address, options=options, args=["--discard-state"])
    try:
        fresh.wait_ready()
        with fresh.settings(), pytest.raises(TaskResultDoesNotExist):
            tasks.add.get_backend().get_result(kept.id)
        [folder] = [n for n in os.listdir(state_dir) if n.startswith("discarded-")]
        assert os.listdir(os.path.join(state_dir, folder)) == ["snapshot-00000002.state"]
    finally:
        fresh.stop()


@pytest.mark.timeout(60)
def test_one_server_per_state_dir():
    state_dir = os.path.join(temp_dir(), "state")
    first = ServerProcess(options={"WORKERS": 1, "STATE_DIR": state_dir})
    try:
        first.wait_ready()
        second = ServerProcess(options={"WORKERS": 1, "STATE_DIR": state_dir})
        try:
            assert second.popen.wait(30) != 0
            out = second.popen.stdout.read()
        finally:
            second.stop()
        assert f"STATE_DIR {state_dir} is in use by another task server (pid " \
               f"{first.popen.pid})" in out
        assert ping(first.address) is not None
    finally:
        first.stop()


@pytest.mark.timeout(90)
def test_a_restored_task_whose_code_is_gone_fails_with_the_import_error():
    tmp, module, path = deploy_module("gone")
    state_dir = os.path.join(temp_dir(), "state")
    options = {"WORKERS": 1, "STATE_DIR": state_dir}
    srv = deploy_server(tmp, options)
    try:
        srv.wait_ready()
        gone = __import__(module)
        with srv.settings():
            later = gone.version.using(run_after=soon(2)).enqueue()
    finally:
        sys.path.remove(tmp)
        srv.stop()
    os.unlink(path)  # the deploy removed the task
    again = deploy_server(tmp, options)
    try:
        again.wait_ready()
        record = wait_until(lambda: (r := again.client().call("wait", later.id, 1.0))
                            and r["status"] == "FAILED" and r, 30, message="the task failed")
        error = record["errors"][0]
        assert error["exception_class_path"] == "builtins.ImportError"
        assert module in error["traceback"]
    finally:
        again.stop()


@pytest.mark.timeout(120)
def test_compactions_under_traffic_then_a_crash_keep_every_record():
    """A small JOURNAL_LIMIT makes the server compact every second or so while tasks flow;
    a SIGKILL at any point of that must still restore every acknowledged task."""
    state_dir = os.path.join(temp_dir(), "state")
    ledger = os.path.join(temp_dir(), "ledger")
    options = {"WORKERS": 2, "STATE_DIR": state_dir, "JOURNAL_LIMIT": 32768,
               "MAX_RESULTS": 5000}
    srv = ServerProcess(options=options)
    try:
        srv.wait_ready()
        with srv.settings():
            results = []
            deadline = time.monotonic() + 6
            n = 0
            while time.monotonic() < deadline:
                results.append(durable_tasks.record.enqueue(ledger, f"c{n}", 0.0))
                n += 1
                time.sleep(0.002)
            compactions = srv.client().call("health")["state"]["compactions"]
        kill_server_and_orphans(srv)
    finally:
        srv.stop()
    assert compactions >= 2, compactions

    again = ServerProcess(address=srv.address, options=options)
    try:
        again.wait_ready()
        with again.settings():
            wait_all(results, timeout=60)
        lines = ledger_lines(ledger)
        assert len(lines) == len(set(lines))  # nothing ran twice
        for i, result in enumerate(results):
            if result.status == "SUCCESSFUL":
                assert lines.count(f"c{i}") == 1
            else:  # running at the kill
                assert result.errors[-1].exception_class_path == WORKER_LOST
        assert sum(r.status == "FAILED" for r in results) <= 2  # at most one per worker
        started = again.client().call("health")["server"]["started_at"]
        wait_until(lambda: (again.client().call("health")["state"]["last_snapshot_at"] or 0)
                   >= started, 20, message="the snapshot of the restored state")
        names = os.listdir(state_dir)  # the older snapshots and journals are gone
        assert not [n for n in names if n.endswith(".tmp")], names
        assert len([n for n in names if n.startswith("snapshot-")]) == 1, names
    finally:
        again.stop()
