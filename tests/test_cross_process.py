"""Separate OS processes share one queue and one result store: shared, embedded and AUTOSTART."""

import contextlib
import json
import os
import stat
import subprocess
import sys
import time

import psutil
import pytest

from django_tasks_shared.client.options import derive_authkey
from helpers import ServerProcess, child_env, ping, short_socket_path, temp_dir, wait_until

# Each child: enqueue COUNT tasks, publish their ids, wait for everybody's, look every id up
# (its own and the others'), publish "done", wait until everybody is done, print a summary.
PEER = r"""
import json, os, sys, time
import django
django.setup()
import psutil
from django.tasks import task_backends
from django_tasks_shared import wait
from testproject import tasks

index, n, count, sync_dir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def publish(name, data):
    tmp = os.path.join(sync_dir, name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, os.path.join(sync_dir, name))

def gather(prefix):
    deadline = time.monotonic() + 60
    while True:
        found = {}
        for i in range(n):
            path = os.path.join(sync_dir, f"{prefix}-{i}")
            if os.path.exists(path):
                with open(path) as f:
                    found[i] = json.load(f)
        if len(found) == n:
            return found
        if time.monotonic() > deadline:
            sys.exit(f"peer {index} timed out waiting for {prefix} files")
        time.sleep(0.02)

publish(f"ready-{index}", {})
gather("ready")  # everybody enqueues at the same moment
mine = {}
for k in range(count):
    result = tasks.add.enqueue(index * 1000, k)
    mine[result.id] = index * 1000 + k
backend = task_backends["default"]
publish(f"ids-{index}", {"ids": mine, "pid": os.getpid()})
everyone = gather("ids")
checked = foreign = 0
for i, data in everyone.items():
    for result_id, expected in data["ids"].items():
        result = wait(tasks.add.get_result(result_id), 30)
        assert result.status == "SUCCESSFUL", (result_id, result.status, result.errors)
        assert result.return_value == expected, (result_id, result.return_value, expected)
        assert result.enqueued_at <= result.started_at <= result.finished_at
        checked += 1
        foreign += i != index
server_pid = backend.client.call("ping")
summary = {"index": index, "pid": os.getpid(), "checked": checked, "foreign": foreign,
           "server_pid": server_pid, "server_ppid": psutil.Process(server_pid).ppid(),
           "address": backend.config.address_text}
publish(f"done-{index}", {})
gather("done")  # the embedded server's owner must not leave while others still look up
print(json.dumps(summary))
"""

# AUTOSTART child: get ready, wait for the starting gun, then enqueue (the first call starts
# a server if none answers) and wait for the result.
RACER = r"""
import json, os, sys, time
import django
django.setup()
from django.tasks import task_backends
from django_tasks_shared import wait
from testproject import tasks

index, sync_dir = int(sys.argv[1]), sys.argv[2]
open(os.path.join(sync_dir, f"ready-{index}"), "w").close()
go = os.path.join(sync_dir, "go")
deadline = time.monotonic() + 60
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("no starting gun")
    time.sleep(0.002)
result = wait(tasks.add.enqueue(index, 100), 30)
print(json.dumps({"status": result.status, "value": result.return_value,
                  "server_pid": task_backends["default"].client.call("ping")}))
"""


def run_peers(script, n, env, args_for):
    return [subprocess.Popen([sys.executable, "-c", script, *args_for(i)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(n)]


def collect(procs, timeout=90):
    outputs = []
    deadline = time.monotonic() + timeout
    for proc in procs:
        out, err = proc.communicate(timeout=max(1, deadline - time.monotonic()))
        assert proc.returncode == 0, f"peer pid {proc.pid} exited {proc.returncode}:\n{err}"
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    return outputs


def kill_all(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def stop_detached_server(pid):
    """SIGTERM a server we do not parent (AUTOSTART detaches it), then make sure it is gone."""
    try:
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
        proc.terminate()
        gone, alive = psutil.wait_procs([proc], timeout=15)
        for p in alive + children:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive + children, timeout=5)
    except psutil.NoSuchProcess:
        pass


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.timeout(120)
def test_processes_share_one_server_and_see_each_others_results():
    n, count = 4, 25
    server = ServerProcess(options={"WORKERS": 2})
    sync_dir = temp_dir(prefix="dts-sync-")
    procs = []
    try:
        server.wait_ready()
        env = child_env(server.address, {"WORKERS": 2})
        procs = run_peers(PEER, n, env, lambda i: [str(i), str(n), str(count), sync_dir])
        summaries = collect(procs)
        server_pid = ping(server.address)
        assert sorted(s["index"] for s in summaries) == list(range(n))
        assert len({s["pid"] for s in summaries}) == n  # really separate processes
        for summary in summaries:
            assert summary["checked"] == n * count
            assert summary["foreign"] == (n - 1) * count
            assert summary["server_pid"] == server_pid
            assert summary["server_ppid"] == os.getpid()  # the tasks_server we started
        state = server.client().call("health")
        assert state["counters"]["enqueued"] == n * count
        assert state["counters"]["succeeded"] == n * count
        assert state["pending"] == state["running"] == 0
    finally:
        kill_all(procs)
        server.stop()


@pytest.mark.timeout(120)
def test_embedded_default_server_is_shared_by_processes():
    n, count = 3, 10
    secret = f"embedded-test-secret-{os.getpid()}-{time.time_ns()}"
    env = child_env(None, {"WORKERS": 1}, TASKS_SECRET_KEY=secret)
    sync_dir = temp_dir(prefix="dts-sync-")
    procs = []
    server_pid = None
    try:
        procs = run_peers(PEER, n, env, lambda i: [str(i), str(n), str(count), sync_dir])
        summaries = collect(procs)
        pids = {s["pid"] for s in summaries}
        assert len(pids) == n
        assert len({s["server_pid"] for s in summaries}) == 1  # one embedded server for all
        assert len({s["address"] for s in summaries}) == 1
        server_pid = summaries[0]["server_pid"]
        assert summaries[0]["server_ppid"] in pids  # a child of whichever process came first
        for summary in summaries:
            assert summary["checked"] == n * count
            assert summary["foreign"] == (n - 1) * count
        address = summaries[0]["address"]
        assert address.startswith("/") and secret not in address
        # the owner has exited: its embedded server (and workers) follow it
        wait_until(lambda: not psutil.pid_exists(server_pid)
                   or psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE,
                   15, message="embedded server exit")
        assert ping(address, derive_authkey(secret, "default")) is None
    finally:
        kill_all(procs)
        if server_pid is not None:
            stop_detached_server(server_pid)


@pytest.mark.timeout(120)
def test_embedded_socket_and_directory_are_private():
    secret = f"embedded-mode-secret-{os.getpid()}-{time.time_ns()}"
    env = child_env(None, {"WORKERS": 1}, TASKS_SECRET_KEY=secret)
    script = r"""
import json, os, stat, sys
import django
django.setup()
from django.tasks import task_backends
from django_tasks_shared import wait
from testproject import tasks
old = os.umask(0o022)  # a permissive umask must not leak into the socket's mode
result = wait(tasks.add.enqueue(2, 2), 30)
backend = task_backends["default"]
address = backend.config.address_text
print(json.dumps({"value": result.return_value, "address": address,
                  "server_pid": backend.client.call("ping"),
                  "sock": stat.S_IMODE(os.stat(address).st_mode),
                  "dir": stat.S_IMODE(os.stat(os.path.dirname(address)).st_mode),
                  "is_socket": stat.S_ISSOCK(os.stat(address).st_mode)}))
"""
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    summary = None
    try:
        summary = collect([proc], 60)[0]
        assert summary["value"] == 4
        assert summary["is_socket"]
        assert oct(summary["sock"]) == oct(0o600)
        assert oct(summary["dir"]) == oct(0o700)
        wait_until(lambda: not psutil.pid_exists(summary["server_pid"])
                   or psutil.Process(summary["server_pid"]).status() == psutil.STATUS_ZOMBIE,
                   15, message="embedded server exit")
    finally:
        kill_all([proc])
        if summary is not None:
            stop_detached_server(summary["server_pid"])


@pytest.mark.timeout(60)
def test_shared_socket_is_0600_in_a_0700_directory():
    parent = temp_dir(prefix="dts-")
    address = os.path.join(parent, "private", "tasks.sock")  # the server creates "private"
    old = os.umask(0o022)  # as a typical shell would have it
    try:
        server = ServerProcess(address=address, options={"WORKERS": 1})
    finally:
        os.umask(old)
    try:
        server.wait_ready()
        assert stat.S_ISSOCK(os.stat(address).st_mode)
        assert oct(mode(address)) == oct(0o600)
        assert oct(mode(os.path.dirname(address))) == oct(0o700)
    finally:
        server.stop()
    assert not os.path.exists(address)  # a clean stop removes the socket file


@pytest.mark.timeout(150)
def test_autostart_race_starts_exactly_one_server():
    n = 6
    address = short_socket_path()
    env = child_env(address, {"WORKERS": 1, "AUTOSTART": True})
    sync_dir = temp_dir(prefix="dts-sync-")
    procs = []
    try:
        procs = run_peers(RACER, n, env, lambda i: [str(i), sync_dir])
        wait_until(lambda: all(os.path.exists(os.path.join(sync_dir, f"ready-{i}"))
                               for i in range(n))
                   or any(p.poll() is not None for p in procs), 60, message="racers ready")
        open(os.path.join(sync_dir, "go"), "w").close()
        summaries = collect(procs)
        assert sorted(s["value"] for s in summaries) == [100 + i for i in range(n)]
        assert all(s["status"] == "SUCCESSFUL" for s in summaries)
        server_pids = {s["server_pid"] for s in summaries}
        assert len(server_pids) == 1, server_pids
        server_pid = server_pids.pop()
        assert server_pid not in {p.pid for p in procs}
        # detached: it outlives every process that used it
        assert all(p.poll() is not None for p in procs)
        assert ping(address) == server_pid
        with open(address + ".log") as f:
            log = f.read()
        assert log.count("listening on") == 1, log  # only one server was ever started
        assert "not starting" not in log, log
    finally:
        kill_all(procs)
        pid = ping(address)
        if pid is not None:
            stop_detached_server(pid)
