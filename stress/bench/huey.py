"""Huey with a private redis-server: the fourth system of `python -m stress.bench`.

    available()   -> None, or the one-line reason it is skipped (no redis-server on PATH: apt-get
                     install redis-server; no huey/redis module: pip install -e .[bench])
    Huey.start()  redis-server --port 0 --unixsocket <new temp dir>/redis.sock --save ""
                    --appendonly no  (no TCP, no persistence; a unix socket like ours, so
                    both sides pay the same transport) -> PING answers (at most 10 s)
                  huey_consumer stress.bench.huey_app.huey -k process -w 2
                    -> 20 warm-up tasks done; its children: the 2 workers and its scheduler
                       (which wakes once a second): their CPU is "worker CPU"
    the workloads (stress/bench/runner.py) call the same methods as on the other systems:
        enqueue_noop / wait_all (Result.get(blocking=True): BLPOP on a notify key per result)
        is_done (Result.is_ready(): one HGET-and-delete; the portable and the polled modes)
        other_pids -> ([redis-server], [the consumer's worker processes])
        w4: a separate process reads finished results by id (huey.result(id, preserve=True))
    Huey.stop()   SIGTERM the consumer (it stops its children), then redis-server, each by pid,
                  waited; SIGKILL after 5 s; the temp dir removed (run from bench.run()'s
                  finally, so also when a workload failed)
"""

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

HOW_REDIS = "apt-get install redis-server"
HOW_HUEY = "pip install -e .[bench]"


def available():
    """None when Huey can run here, else why not and how to install what is missing."""
    if shutil.which("redis-server") is None:
        return f"no redis-server on PATH (install it: {HOW_REDIS})"
    try:
        import huey  # noqa: F401
        import redis  # noqa: F401
    except ImportError as exc:
        return f"Python module {exc.name!r} missing (install it: {HOW_HUEY})"
    return None


def stop_pid(popen, timeout=5.0):
    """SIGTERM one process we started, by its pid; SIGKILL if it is still there after timeout."""
    if popen is None or popen.poll() is not None:
        return
    popen.terminate()
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout)


class Huey:
    name = "huey"
    label = "Huey {} + redis-server {} (unix socket, no persistence), 2 worker processes"

    def __init__(self, args, counts, root):
        self.args, self.counts, self.root = args, counts, root
        self.redis = self.consumer = None
        self.tmp = tempfile.mkdtemp(prefix="dts-bench-huey-")

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self):
        import huey
        import redis

        self.socket = os.path.join(self.tmp, "redis.sock")
        os.environ["BENCH_REDIS_SOCKET"] = self.socket
        self.redis = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", self.tmp, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL)
        conn = redis.Redis(unix_socket_path=self.socket, socket_timeout=1.0)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.exceptions.ConnectionError):
                if conn.ping():
                    break
            if self.redis.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.socket} did not answer PING")
            time.sleep(0.02)
        self.redis_version = conn.info("server")["redis_version"]
        conn.close()
        from . import huey_app as bench_huey_app

        self.app = bench_huey_app
        self.label = self.label.format(huey.__version__, self.redis_version)
        # the tasks module imports django.tasks' @task, which checks the settings' backends
        env = dict(os.environ, DJANGO_SETTINGS_MODULE="stress.bench.settings",
                   PYTHONPATH=os.pathsep.join([self.root, os.environ.get("PYTHONPATH", "")]))
        consumer = os.path.join(os.path.dirname(sys.executable), "huey_consumer")
        self.consumer = subprocess.Popen(
            [consumer, "stress.bench.huey_app.huey", "-k", "process", "-w", "2", "-q",
             "--no-periodic", "-l", os.path.join(self.tmp, "consumer.log")],
            cwd=self.root, env=env, stdout=subprocess.DEVNULL)
        self._warm_up()
        self.worker_pids = self._workers()

    def _warm_up(self, n=20, timeout=30.0):
        """n tasks done (the consumer is up); its log in the error when it is not."""
        pending = [self.app.noop() for _ in range(n)]
        deadline = time.monotonic() + timeout
        while pending:
            pending = [r for r in pending if not r.is_ready()]
            if self.consumer.poll() is not None or time.monotonic() > deadline:
                log = os.path.join(self.tmp, "consumer.log")
                tail = open(log).read()[-2000:] if os.path.exists(log) else "(no log)"
                raise RuntimeError(f"huey_consumer did not run {n} tasks within {timeout:g} s "
                                   f"(exit code {self.consumer.poll()}); its log:\n{tail}")
            time.sleep(0.01)

    def _workers(self):
        import psutil

        deadline = time.monotonic() + 10
        while True:
            kids = [p.pid for p in psutil.Process(self.consumer.pid).children()]
            if len(kids) >= 2 or time.monotonic() > deadline:
                return kids
            time.sleep(0.05)

    def stop(self):
        try:
            stop_pid(self.consumer)
        finally:
            stop_pid(self.redis)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def pids(self):
        return [p.pid for p in (self.consumer, self.redis) if p is not None]

    # -- what the workloads call --------------------------------------------------------------

    def other_pids(self):
        return [self.redis.pid], self.worker_pids

    def enqueue_noop(self):
        return self.app.noop()

    def enqueue_burn(self, n):
        return self.app.burn(n)

    def wait_all(self, results):
        for r in results:
            r.get(blocking=True, timeout=60)

    def is_done(self, r):
        return r.is_ready()

    def poll(self, r):
        while not r.is_ready():
            if self.args.poll:
                time.sleep(self.args.poll)

    def w2_modes(self):
        return {"poll": self.poll, "wait": lambda r: r.get(blocking=True, timeout=30)}

    def value(self, r):
        return r.get(blocking=True, timeout=60)

    def status(self, r):
        from huey.api import Error
        from huey.constants import EmptyData

        value = r._result  # what get()/is_ready() fetched (Huey keeps it on the Result)
        return "FAILED" if value is EmptyData or isinstance(value, Error) else "SUCCESSFUL"

    def w4(self, n_ids, n_lookups):
        from .runner import percentile, run_child

        results = [self.app.noop() for _ in range(n_ids)]
        for r in results:  # preserve: the other process must still find them
            r.get(blocking=True, timeout=60, preserve=True)
        ids = [r.id for r in results]
        out = run_child({"huey": True, "ids": ids, "lookups": n_lookups})
        if out["found"] != len(ids):
            raise RuntimeError(f"W4 huey: the other process found {out['found']} of {len(ids)}")
        return {"w4_p50_us": percentile(out["times"], 50) * 1e6,
                "w4_p99_us": percentile(out["times"], 99) * 1e6,
                "w4_ping_p50_us": percentile(out["ping"], 50) * 1e6}


def w4_child(spec):
    """In the separate W4 process: look finished results up by id, then time bare PINGs."""
    from .huey_app import huey

    found = sum(huey.storage.has_data_for_key(i) for i in spec["ids"])  # stored, not taken
    ids, times, ping = spec["ids"], [], []
    for i in range(spec["lookups"]):
        task_id = ids[i % len(ids)]
        t0 = time.perf_counter()
        huey.result(task_id, preserve=True)
        times.append(time.perf_counter() - t0)
    for _ in range(min(spec["lookups"], 500)):
        t0 = time.perf_counter()
        huey.storage.conn.ping()
        ping.append(time.perf_counter() - t0)
    return {"found": found, "times": times, "ping": ping}
