"""A real gunicorn (3 forked workers) serving the test project: POSTs enqueue, and GETs served by
other worker processes see the results, because they all share one task server."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from helpers import TESTS_DIR, ServerProcess, child_env, stop_process, temp_dir, wait_until

GUNICORN_WORKERS = 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, body=None):
    """One request on a NEW connection (urllib never reuses one); returns (status, json)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json",
                                          "Connection": "close"})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def start_gunicorn(address, port, log_path):
    env = child_env(address, {"WORKERS": 2}, TASKS_WSGI_WARMUP="1")
    log = open(log_path, "wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--chdir", TESTS_DIR, "--preload",
             "--workers", str(GUNICORN_WORKERS), "--bind", f"127.0.0.1:{port}",
             "--timeout", "60", "--graceful-timeout", "5", "testproject.wsgi:application"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


@pytest.mark.timeout(150)
def test_gunicorn_workers_share_results():
    server = ServerProcess(options={"WORKERS": 2})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = os.path.join(temp_dir(prefix="dts-gunicorn-"), "gunicorn.log")
    gunicorn = None
    try:
        server.wait_ready()
        gunicorn = start_gunicorn(server.address, port, log_path)

        def workers_up():
            assert gunicorn.poll() is None, f"gunicorn exited:\n{read(log_path)}"
            try:
                children = psutil.Process(gunicorn.pid).children()
            except psutil.Error:
                return False
            if len(children) < GUNICORN_WORKERS:
                return False
            try:
                return request(f"{base}/result/warming-up")[0] == 404
            except OSError:
                return False

        wait_until(workers_up, 60, 0.1, message=f"gunicorn on {base}")
        gunicorn_pids = {p.pid for p in psutil.Process(gunicorn.pid).children()}
        assert len(gunicorn_pids) == GUNICORN_WORKERS

        # enqueue through the web workers, in parallel so that several of them take part
        bodies = [{"a": i, "b": 1000} for i in range(24)]
        with ThreadPoolExecutor(6) as pool:
            posted = list(pool.map(lambda body: request(f"{base}/enqueue", body), bodies))
        enqueued = {}  # id -> (expected value, pid that enqueued it)
        for body, (status, payload) in zip(bodies, posted, strict=True):
            assert status == 200, payload
            assert payload["pid"] in gunicorn_pids
            enqueued[payload["id"]] = (body["a"] + body["b"], payload["pid"])

        # look every result up on new connections until SUCCESSFUL results have been served by
        # every web worker, and at least once by a worker other than the one that enqueued it
        served_by = set()
        cross = 0
        done = {}

        def lookup(result_id):
            return result_id, request(f"{base}/result/{result_id}")

        deadline = time.monotonic() + 60
        while True:
            with ThreadPoolExecutor(6) as pool:
                replies = list(pool.map(lookup, list(enqueued) * 2))
            for result_id, (status, payload) in replies:
                assert status == 200, (result_id, status, payload)
                assert payload["pid"] in gunicorn_pids
                assert payload["status"] in ("READY", "RUNNING", "SUCCESSFUL"), payload
                if payload["status"] == "SUCCESSFUL":
                    expected, enqueuer = enqueued[result_id]
                    assert payload["return_value"] == expected, payload
                    assert len(payload["worker_ids"]) == 1
                    done[result_id] = payload
                    served_by.add(payload["pid"])
                    cross += payload["pid"] != enqueuer
            if len(done) == len(enqueued) and served_by == gunicorn_pids and cross:
                break
            assert time.monotonic() < deadline, (
                f"after 60 s: {len(done)}/{len(enqueued)} finished, SUCCESSFUL results served "
                f"by pids {sorted(served_by)} of {sorted(gunicorn_pids)}, {cross} lookups by a "
                f"worker other than the enqueuer")
        assert len(served_by) == GUNICORN_WORKERS  # different worker pids saw the results
        assert cross > 0

        # every task really ran in the task server's workers, not in gunicorn
        task_workers = {w["id"] for w in server.client().call("health")["workers"]}
        assert {p["worker_ids"][0] for p in done.values()} <= task_workers
        state = server.client().call("health")
        assert state["counters"]["succeeded"] == len(enqueued)
        assert request(f"{base}/result/unknown-id")[0] == 404
    finally:
        if gunicorn is not None:
            stop_process(gunicorn)
        server.stop()
