"""Benchmark: django-tasks-shared vs django-tasks-local 2.0 vs a raw ProcessPoolExecutor vs Huey.

    python -m stress.bench [--quick] [--repeat N] [--pick best|median] [--json FILE] [--server]
                           [--no-state | --state-only] [--no-huey]

Everything runs in ONE run on this machine, the four systems back to back inside each repeat
(the order rotates between repeats), each with 2 worker processes:

    shared  django_tasks_shared.ProcessPoolBackend, WORKERS=2, unix socket; by default the
            embedded server (no ADDRESS: started by this process, stopped with it); --server
            starts `django-admin tasks_server` on a private socket instead
    local   django_tasks_local.ProcessPoolBackend, MAX_WORKERS=2 (no sharing between processes)
    raw     concurrent.futures.ProcessPoolExecutor(2), plain functions, no Django
    huey    Huey with a private redis-server (stress/bench/huey.py: both started and stopped by
            pid here; skipped, saying how to install them, when redis-server or huey is missing)

    W1  2,000 no-op tasks: enqueue all, then wait for all -> tasks/s, and the CPU per task spent
        in the enqueuing process (time.process_time delta / tasks) and in the other processes.
        Waiting for all: ours django_tasks_shared.wait_all (a few round trips per
        batch; also shown: one blocking wait() per result), local polls refresh() per result,
        raw calls Future.result() per future, Huey a blocking Result.get() per result.
        CPU per task: server (the embedded server's pid from health(); redis-server for Huey)
        and worker processes (health()'s workers; the pool's or the consumer's children), each
        read from the process's CPU clock to the ns (stress/bench/cpu.py)
    W1 portable (stress/bench/portable.py): W1 again, waited the way code for ANY backend
        waits, two ways: refresh() over the pending results every 1 ms, and each result
        refresh()ed in order until finished, 1 ms apart (Huey: is_ready(); raw: done())
    W1 enqueue_many (ours only): the 2,000 tasks in one django_tasks_shared.enqueue_many()
        call (4 round trips), then wait_all -> the enqueue call's tasks/s, against the raw
        executor's submit loop ("W1 enqueue phase alone" of raw), and the whole run's tasks/s
    W2  200 single tasks one after another: enqueue -> observed finished, p50/p99; polled with
        TaskResult.refresh() (Future.done() for raw), and blocking (django_tasks_shared.wait;
        Future.result() for raw; django-tasks-local has no blocking wait)
    W3  40 CPU-bound ~50 ms tasks -> wall time against the ideal, sum(task CPU) / 2 cores, with
        the task CPU measured inside the task (time.thread_time)
    W4  one get_result of a finished result from a process that did not enqueue it, p50/p99
        (a separate OS process; django-tasks-local cannot see other processes' results at all)
    W5  (stress/bench/w5.py, ours only) 64 client processes enqueuing and waiting at once
        against 1 client doing the same total -> tasks/s of each and the ratio

    W1 with a STATE_DIR (stress/bench/durable.py): W1 again on three more embedded servers,
        STATE_DIR with FSYNC "everysec", "always", "never", paired per repeat with an in-memory
        W1 run next to them -> ratios (issue 7 target: everysec >= 0.85x in-memory)

Prints a table, ratios (ours / local, ours / raw, ours / huey), PASS/MISS per target of issue 2
(stress/bench/report.py) and per target of issue 9, judged per repeat with "met k/N"
(stress/bench/targets.py). Not a test: exits 0 whatever the figures, unless something crashes.
Every process it starts is stopped by pid at the end.
"""

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

from stress.common.layout import internal
from stress.common.paths import ROOT

from . import durable as bench_durable
from . import portable as bench_portable
from . import report as bench_report
from . import w5 as bench_w5
from .cpu import cpu_of

SETTINGS = "stress.bench.settings"
FINISHED = ("SUCCESSFUL", "FAILED")

FULL = {"w1": 2000, "w2": 200, "w3": 40, "w4": 1000, "w4_ids": 200, "w5": 2048}
QUICK = {"w1": 500, "w2": 60, "w3": 12, "w4": 300, "w4_ids": 60, "w5": 640}

# metric -> (label, unit scale, format, better: "high" | "low")
METRICS = [
    ("w1_tps", "W1 throughput, tasks/s", "{:,.0f}", "high"),
    ("w1_each_tps", "W1 waiting with one wait() per task, /s", "{:,.0f}", "high"),
    ("w1_enqueue_tps", "W1 enqueue phase alone, tasks/s", "{:,.0f}", "high"),
    ("w1_client_rt", "W1 round trips/task from enqueuing process", "{:.3f}", "low"),
    ("w1_client_cpu_us", "W1 CPU/task in enqueuing process, us", "{:,.0f}", "low"),
    ("w1_server_cpu_us", "W1 CPU/task in server process, us", "{:,.0f}", "low"),
    ("w1_worker_cpu_us", "W1 CPU/task in worker processes, us", "{:,.0f}", "low"),
    ("w1_portable_tps", "W1 portable (refresh() every 1 ms), tasks/s", "{:,.0f}", "high"),
    ("w1_portable_client_cpu_us", "W1 portable CPU/task enqueuing process, us", "{:,.0f}",
     "low"),
    ("w1_inorder_tps", "W1 in order (refresh() each, 1 ms), tasks/s", "{:,.0f}", "high"),
    ("w1_inorder_client_cpu_us", "W1 in order CPU/task enqueuing process, us", "{:,.0f}",
     "low"),
    ("w1_all_cpu_us", "W1 CPU/task, all processes, us", "{:,.0f}", "low"),
    ("w1_many_enqueue_tps", "W1 enqueue_many() call alone, tasks/s", "{:,.0f}", "high"),
    ("w1_many_tps", "W1 enqueue_many() then wait_all, tasks/s", "{:,.0f}", "high"),
    ("w1_many_all_cpu_us", "W1 enqueue_many CPU/task, all processes, us", "{:,.0f}", "low"),
    ("w2_poll_p50_ms", "W2 latency polled p50, ms", "{:.3f}", "low"),
    ("w2_poll_p99_ms", "W2 latency polled p99, ms", "{:.3f}", "low"),
    ("w2_wait_p50_ms", "W2 latency blocking wait p50, ms", "{:.3f}", "low"),
    ("w2_wait_p99_ms", "W2 latency blocking wait p99, ms", "{:.3f}", "low"),
    ("w3_wall_s", "W3 wall, s", "{:.3f}", "low"),
    ("w3_ideal_s", "W3 ideal (task CPU / 2), s", "{:.3f}", None),
    ("w3_over_pct", "W3 over ideal, %", "{:+.1f}", "low"),
    ("w3_others_cores", "W3 cores busy with OTHER processes", "{:.2f}", None),
    ("w3_over_left_pct", "W3 over ideal on the cores left, %", "{:+.1f}", None),
    ("w4_p50_us", "W4 get_result other process p50, us", "{:,.0f}", "low"),
    ("w4_p99_us", "W4 get_result other process p99, us", "{:,.0f}", "low"),
    ("w4_ping_p50_us", "W4 bare round trip (ping) p50, us", "{:,.0f}", "low"),
    ("w5_1_tps", "W5 1 client process, tasks/s", "{:,.0f}", "high"),
    ("w5_many_tps", "W5 64 client processes at once, tasks/s", "{:,.0f}", "high"),
    ("w5_ratio", "W5 64 clients / 1 client", "{:.2f}x", "high"),
    ("w5_1_server_cpu_us", "W5 server CPU/task, 1 client, us", "{:,.0f}", "low"),
    ("w5_many_server_cpu_us", "W5 server CPU/task, 64 clients, us", "{:,.0f}", "low"),
]
NOT_SHARED = "n/a (not shared)"


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# ---------------------------------------------------------------------------------------------
# systems


class Shared:
    name = "shared"

    def __init__(self, args, counts):
        from django.tasks import task_backends

        from django_tasks_shared import wait, wait_all
        from stress.common import tasks as bench_tasks

        self.args, self.counts, self.tasks, self.wait = args, counts, bench_tasks, wait
        self.wait_all_fn = wait_all
        self.backend = task_backends["default"]
        self.label = ("django-tasks-shared ProcessPoolBackend, 2 workers, unix socket, "
                      + ("started tasks_server" if args.server else "embedded server"))

    def start(self):
        results = [self.tasks.noop.enqueue() for _ in range(20)]
        for r in results:
            self.wait(r, 30)
        health = self.workers_ready()
        self.worker_pids = [w["pid"] for w in health["workers"]]

    def workers_ready(self):
        """Health once both workers are registered and idle (at most 20 s); sets server_pid."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            health = self.backend.health()
            if sum(w["state"] in ("idle", "busy") for w in health["workers"]) >= 2:
                break
            time.sleep(0.05)
        self.server_pid = health["server"]["pid"]
        return health

    def other_pids(self):
        health = self.backend.health()
        self.worker_pids = [w["pid"] for w in health["workers"]]
        return [self.server_pid], self.worker_pids

    def enqueue_noop(self):
        return self.tasks.noop.enqueue()

    def enqueue_many_noop(self, n):
        from django_tasks_shared import enqueue_many  # (an older checkout: see w1_many)

        return enqueue_many(self.tasks.noop, [((), {})] * n)

    def wait_all(self, results):
        self.wait_all_fn(results, 60)

    def wait_each(self, results):
        for r in results:
            self.wait(r, 60)

    def is_done(self, r):
        return bench_portable.refresh_done(r)

    def poll(self, r):
        while r.status.value not in FINISHED:
            if self.args.poll:
                time.sleep(self.args.poll)
            r.refresh()

    def w2_modes(self):
        return {"poll": self.poll, "wait": lambda r: self.wait(r, 30)}

    def enqueue_burn(self, n):
        return self.tasks.burn.enqueue(n)

    def value(self, r):
        return r.return_value

    def status(self, r):
        return r.status.value

    def w4(self, n_ids, n_lookups):
        results = [self.tasks.noop.enqueue() for _ in range(n_ids)]
        self.wait_all(results)
        ids = [r.id for r in results]
        out = run_child({"alias": "default", "ids": ids, "lookups": n_lookups})
        if out["found"] != len(ids):
            raise RuntimeError(f"W4: the other process found {out['found']} of {len(ids)}")
        return {"w4_p50_us": percentile(out["times"], 50) * 1e6,
                "w4_p99_us": percentile(out["times"], 99) * 1e6,
                "w4_ping_p50_us": percentile(out["ping"], 50) * 1e6}

    def stop(self):
        pass


class Local(Shared):
    name = "local"
    wait_each = None  # results are polled one by one (no batch or blocking wait offered)
    enqueue_many_noop = None  # no bulk enqueue

    def __init__(self, args, counts):
        super().__init__(args, counts)
        from django.tasks import task_backends

        self.backend = task_backends["local"]
        self.noop = self.tasks.noop.using(backend="local")
        self.burn = self.tasks.burn.using(backend="local")
        self.label = "django-tasks-local 2.0 ProcessPoolBackend, MAX_WORKERS=2"

    def start(self):
        results = [self.noop.enqueue() for _ in range(20)]
        self.wait_all(results)
        self.server_pid = None

    def other_pids(self):
        return [], list(self.backend._state.executor._processes or {})

    def enqueue_noop(self):
        return self.noop.enqueue()

    def wait_all(self, results):
        for r in results:
            self.poll(r)

    def w2_modes(self):
        return {"poll": self.poll}

    def enqueue_burn(self, n):
        return self.burn.enqueue(n)

    def w4(self, n_ids, n_lookups):
        results = [self.noop.enqueue() for _ in range(n_ids)]
        self.wait_all(results)
        out = run_child({"alias": "local", "ids": [r.id for r in results], "lookups": 0})
        if out["found"]:
            raise RuntimeError("W4: django-tasks-local results seen from another process?")
        return {"w4_p50_us": NOT_SHARED, "w4_p99_us": NOT_SHARED, "w4_ping_p50_us": NOT_SHARED}

    def stop(self):
        self.backend.close()


class Raw:
    name = "raw"
    label = "concurrent.futures.ProcessPoolExecutor(2), plain functions"

    def __init__(self, args, counts):
        from stress.common import tasks as bench_tasks

        self.args, self.counts, self.tasks = args, counts, bench_tasks
        self.executor = None

    def start(self):
        from concurrent.futures import ProcessPoolExecutor

        self.executor = ProcessPoolExecutor(2)
        self.wait_all([self.executor.submit(self.tasks.raw_noop) for _ in range(20)])

    def other_pids(self):
        return [], list(self.executor._processes or {})

    def enqueue_noop(self):
        return self.executor.submit(self.tasks.raw_noop)

    def wait_all(self, futures):
        for f in futures:
            f.result(60)

    def is_done(self, f):
        return f.done()

    def poll(self, f):
        while not f.done():
            if self.args.poll:
                time.sleep(self.args.poll)

    def w2_modes(self):
        return {"poll": self.poll, "wait": lambda f: f.result(30)}

    def enqueue_burn(self, n):
        return self.executor.submit(self.tasks.raw_burn, n)

    def value(self, f):
        return f.result()

    def status(self, f):
        return "FAILED" if f.exception() else "SUCCESSFUL"

    def w4(self, n_ids, n_lookups):
        return {"w4_p50_us": "n/a (no results)", "w4_p99_us": "n/a (no results)",
                "w4_ping_p50_us": "n/a"}

    def stop(self):
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# workloads


def w1(system, n):
    out = _w1(system, n, system.wait_all)
    wait_each = getattr(system, "wait_each", None)
    if wait_each is None:
        out["w1_each_tps"] = "-"
    else:
        out["w1_each_tps"] = _w1(system, n, wait_each)["w1_tps"]
    return out


def _w1(system, n, wait_all):
    servers, workers = system.other_pids()
    others0 = cpu_of(servers), cpu_of(workers)
    with count_round_trips() as trips:
        cpu0, t0 = time.process_time(), time.perf_counter()
        results = [system.enqueue_noop() for _ in range(n)]
        t_enq = time.perf_counter()
        wait_all(results)
        t1, cpu1 = time.perf_counter(), time.process_time()
    servers, workers = system.other_pids()
    bad = [system.status(r) for r in results if system.status(r) != "SUCCESSFUL"]
    if bad:
        raise RuntimeError(f"W1 {system.name}: {len(bad)} of {n} tasks did not succeed")
    out = {"w1_tps": n / (t1 - t0), "w1_enqueue_tps": n / (t_enq - t0),
           "w1_client_cpu_us": (cpu1 - cpu0) / n * 1e6,
           "w1_worker_cpu_us": (cpu_of(workers) - others0[1]) / n * 1e6}
    out["w1_server_cpu_us"] = ((cpu_of(servers) - others0[0]) / n * 1e6) if servers else "-"
    out["w1_all_cpu_us"] = out["w1_client_cpu_us"] + out["w1_worker_cpu_us"] + (
        out["w1_server_cpu_us"] if servers else 0.0)
    out["w1_client_rt"] = trips[0] / n if system.name == "shared" else "-"
    return out


def w1_many(system, n):
    """W1 with the tasks enqueued in one enqueue_many() call (ours): its own tasks/s, the
    whole run's, and the CPU per task of all our processes."""
    many = getattr(system, "enqueue_many_noop", None)
    if many is not None and system.name == "shared":
        import django_tasks_shared

        if "enqueue_many" not in getattr(django_tasks_shared, "__all__", ()):
            many = None  # the package of an older checkout (PYTHONPATH): before/after runs
    if many is None:
        return {"w1_many_enqueue_tps": "-", "w1_many_tps": "-", "w1_many_all_cpu_us": "-"}
    servers, workers = system.other_pids()
    others0 = cpu_of(servers) + cpu_of(workers)
    cpu0, t0 = time.process_time(), time.perf_counter()
    results = many(n)
    t_enq = time.perf_counter()
    system.wait_all(results)
    t1, cpu1 = time.perf_counter(), time.process_time()
    servers, workers = system.other_pids()
    bad = [system.status(r) for r in results if system.status(r) != "SUCCESSFUL"]
    if bad:
        raise RuntimeError(f"W1 enqueue_many {system.name}: {len(bad)} of {n} did not succeed")
    return {"w1_many_enqueue_tps": n / (t_enq - t0), "w1_many_tps": n / (t1 - t0),
            "w1_many_all_cpu_us": (cpu1 - cpu0 + cpu_of(servers) + cpu_of(workers) - others0)
            / n * 1e6}


@contextlib.contextmanager
def count_round_trips():
    """Counts StoreClient.call in this process (each call is one socket round trip)."""
    from django_tasks_shared.client.connection import StoreClient

    trips = [0]
    original = StoreClient.call

    def call(self, method, *args):
        trips[0] += 1
        return original(self, method, *args)

    StoreClient.call = call
    try:
        yield trips
    finally:
        StoreClient.call = original


def w2(system, n):
    out = {}
    for mode, waiter in system.w2_modes().items():
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            r = system.enqueue_noop()
            waiter(r)
            times.append(time.perf_counter() - t0)
            if system.status(r) != "SUCCESSFUL":
                raise RuntimeError(f"W2 {system.name}: a task did not succeed")
        out[f"w2_{mode}_p50_ms"] = percentile(times, 50) * 1e3
        out[f"w2_{mode}_p99_ms"] = percentile(times, 99) * 1e3
    for key in ("w2_wait_p50_ms", "w2_wait_p99_ms"):
        out.setdefault(key, "n/a (no blocking wait)")
    return out


def w3(system, n, iterations):
    servers, workers = system.other_pids()
    ours0, busy0 = time.process_time() + cpu_of(servers + workers), machine_busy()[0]
    t0 = time.perf_counter()
    results = [system.enqueue_burn(iterations) for _ in range(n)]
    system.wait_all(results)
    wall = time.perf_counter() - t0
    ours1, busy1 = time.process_time() + cpu_of(servers + workers), machine_busy()[0]
    cpu = sum(system.value(r)["cpu"] for r in results)
    ideal = cpu / 2
    # The CPU other processes took meanwhile: what the 2 cores really left for this run.
    others = max(0.0, (busy1 - busy0) - (ours1 - ours0))
    left = min(2.0, max(0.5, 2.0 - others / wall))
    return {"w3_wall_s": wall, "w3_ideal_s": ideal, "w3_over_pct": (wall / ideal - 1) * 100,
            "w3_others_cores": others / wall,
            "w3_over_left_pct": (wall / (cpu / left) - 1) * 100}


# ---------------------------------------------------------------------------------------------
# the W4 child: a process that did not enqueue the results looks them up

_children = []


def run_child(spec, flag="--w4-child"):
    env = dict(os.environ, DJANGO_SETTINGS_MODULE=SETTINGS,
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    popen = subprocess.Popen([sys.executable, "-m", "stress.bench", flag], cwd=ROOT,
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    _children.append(popen)
    try:
        out, _ = popen.communicate(json.dumps(spec), timeout=120)
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()
    if popen.returncode != 0:
        raise RuntimeError(f"{flag} child exited with {popen.returncode}")
    return json.loads(out)


def w4_child():
    import django

    django.setup()
    from django.tasks import task_backends
    from django.tasks.exceptions import TaskResultDoesNotExist

    spec = json.loads(sys.stdin.read())
    if spec.get("huey"):
        from . import huey as bench_huey

        return json.dump(bench_huey.w4_child(spec), sys.stdout)
    backend = task_backends[spec["alias"]]
    found = 0
    for task_id in spec["ids"]:
        with contextlib.suppress(TaskResultDoesNotExist):
            if backend.get_result(task_id).status.value == "SUCCESSFUL":
                found += 1
    times, ping = [], []
    ids = spec["ids"]
    for i in range(spec["lookups"]):
        task_id = ids[i % len(ids)]
        t0 = time.perf_counter()
        backend.get_result(task_id)
        times.append(time.perf_counter() - t0)
    if spec["lookups"]:
        for _ in range(min(spec["lookups"], 500)):
            t0 = time.perf_counter()
            backend.client.call("ping")
            ping.append(time.perf_counter() - t0)
    json.dump({"found": found, "times": times, "ping": ping}, sys.stdout)


# ---------------------------------------------------------------------------------------------
# running, picking, printing


def machine_busy():
    """(busy CPU seconds of the whole machine, CPU seconds of this process and its reaped
    descendants): the difference over a run is what OTHER processes used meanwhile."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / tick  # minus idle and iowait
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


def run(args):
    """Every workload of every system, --repeat times: (systems, samples, burn iterations,
    counts, samples of W1 with a STATE_DIR). Sets args.load_before, args.skipped and
    args.others_cpu_pct for the report."""
    counts = QUICK if args.quick else FULL
    args.load_before = os.getloadavg()
    busy0 = machine_busy()
    wall0 = time.perf_counter()
    sock_dir, state_root, server = set_up(args)

    from stress.common import tasks as bench_tasks

    iterations = bench_tasks.calibrate_burn(0.050)
    systems = build_systems(args, counts)
    samples = {s.name: [] for s in systems}
    durable = bench_durable.make_systems(Shared, args, counts) if state_root else []
    state_samples = {}
    try:
        for s in systems + durable:
            s.start()
        for rep in range(args.repeat):
            run_repeat(args, rep, systems, durable, counts, iterations, samples, state_samples)
    finally:
        tear_down(systems, server, (state_root, sock_dir))
    busy1 = machine_busy()
    wall = time.perf_counter() - wall0
    args.others_cpu_pct = others_cpu_pct(busy0, busy1, wall)
    return systems, samples, iterations, counts, state_samples


def set_up(args):
    """The environment the settings read, django.setup() and, with --server, a started
    tasks_server: (the --server socket's directory, the STATE_DIR root, the server's Popen)."""
    sock_dir = None
    if args.server:
        sock_dir = tempfile.mkdtemp(prefix="dts-bench-")
        os.environ["BENCH_TASKS_ADDRESS"] = os.path.join(sock_dir, "tasks.sock")
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
    state_root = None
    if not args.no_state:
        state_root = bench_durable.prepare()
    import django

    django.setup()
    server = start_tasks_server() if args.server else None
    return sock_dir, state_root, server


def build_systems(args, counts):
    """The systems compared (none with --state-only); Huey too unless --no-huey, or unless it
    cannot run here (args.skipped["huey"] says why)."""
    classes = [] if args.state_only else [Shared, Local, Raw]
    systems = [cls(args, counts) for cls in classes]
    args.skipped = {}
    if classes and not args.no_huey:
        from . import huey as bench_huey

        why = bench_huey.available()
        if why:
            args.skipped["huey"] = why
            print(f"  huey skipped: {why}", file=sys.stderr, flush=True)
        else:
            systems.append(bench_huey.Huey(args, counts, ROOT))
    return systems


def run_repeat(args, rep, systems, durable, counts, iterations, samples, state_samples):
    """Repeat `rep`: W1 with a STATE_DIR per FSYNC mode, then every workload of each system,
    the systems' order rotated by `rep`; the figures appended to the samples."""
    if durable:
        bench_durable.repeat(durable, rep, counts["w1"], _w1, state_samples)
        everysec = state_samples["everysec"][-1]["tps"] / state_samples["memory"][-1]["tps"]
        print(f"  repeat {rep + 1}/{args.repeat} W1 STATE_DIR: " + ", ".join(
            f"{mode} {v[-1]['tps']:,.0f}/s" for mode, v in state_samples.items()),
            file=sys.stderr, flush=True)
    if not systems:
        return
    k = rep % len(systems)
    for s in systems[k:] + systems[:k]:
        t0 = time.perf_counter()
        figures, w5_seconds = workloads(s, rep, counts, iterations)
        if durable and s.name == "shared":  # the issue 16 table judges it per repeat too
            figures["w1_everysec_ratio"] = everysec
        samples[s.name].append(figures)
        w5_note = ("" if w5_seconds is None else
                   f", W5 {figures['w5_ratio']:.2f}x ({w5_seconds:.1f} s)")
        print(f"  repeat {rep + 1}/{args.repeat} {s.name:<6} done in "
              f"{time.perf_counter() - t0:5.1f} s: W1 {figures['w1_tps']:,.0f}/s, "
              f"portable {figures['w1_portable_tps']:,.0f}/s, in order "
              f"{figures['w1_inorder_tps']:,.0f}/s{w5_note} (load {os.getloadavg()[0]:.2f})",
              file=sys.stderr, flush=True)


def workloads(system, rep, counts, iterations):
    """W1, W1 portable, W2, W3, W4 and, on ours, W5: (one system's figures of one repeat, the
    seconds W5 took or None)."""
    figures, w5_seconds = {}, None
    figures.update(w1(system, counts["w1"]))
    figures.update(w1_many(system, counts["w1"]))
    figures.update(bench_portable.w1_portable(system, counts["w1"]))
    figures.update(w2(system, counts["w2"]))
    figures.update(w3(system, counts["w3"], iterations))
    figures.update(system.w4(counts["w4_ids"], counts["w4"]))
    if system.name == "shared":
        t5 = time.perf_counter()
        figures.update(bench_w5.w5(system, counts["w5"], rep, run_child, cpu_of))
        w5_seconds = time.perf_counter() - t5
    return figures, w5_seconds


def tear_down(systems, server, directories):
    """Stop the systems and every process the run started, by pid; remove its directories."""
    for s in systems:
        with contextlib.suppress(Exception):
            s.stop()
    stop_everything(server)
    for directory in directories:  # the --server socket's dir too (was left)
        if directory:
            shutil.rmtree(directory, ignore_errors=True)


def others_cpu_pct(busy0, busy1, wall):
    """% of the machine's CPU that OTHER processes used between two machine_busy() reads."""
    others = (busy1[0] - busy0[0]) - (busy1[1] - busy0[1])
    return max(0.0, others) / (wall * (os.cpu_count() or 1)) * 100


def start_tasks_server():
    from django_tasks_shared.client.connection import StoreClient
    from django_tasks_shared.exceptions import ServerUnavailable

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    popen = subprocess.Popen([sys.executable, "-m", "django", "tasks_server"], cwd=ROOT, env=env)
    _children.append(popen)
    from django.tasks import task_backends

    config = task_backends["default"].config
    client = StoreClient(config.address, config.authkey, timeout=1.0)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.call("ping")
            return popen
        except ServerUnavailable:
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("tasks_server did not start") from None
            time.sleep(0.05)


def stop_everything(server=None):
    """Stop every process this run started, by pid: servers first (they drain their workers),
    then anything left among our descendants."""
    import psutil

    # (this layout's path, or an older one's: profile_worker --src runs this on an older checkout)
    launcher = internal("django_tasks_shared.client.launcher", "django_tasks_shared.launcher")
    me = psutil.Process()
    descendants = me.children(recursive=True)
    servers = [p.pid for p in launcher.owned_servers() if p.poll() is None]
    if server is not None and server.poll() is None:
        servers.append(server.pid)
    procs = []
    for pid in servers:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
    psutil.wait_procs(procs, timeout=10)
    leftovers = [p for p in descendants if p.is_running()]
    for proc in leftovers:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(leftovers, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    for popen in launcher.owned_servers() + _children:
        with contextlib.suppress(Exception):
            popen.wait(timeout=1)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m stress.bench", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts (under a minute)")
    parser.add_argument("--repeat", type=int, default=1, help="run everything N times")
    parser.add_argument("--pick", choices=("best", "median"), default="best",
                        help="which of the repeats each figure shows (default best)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument("--server", action="store_true",
                        help="use a started `tasks_server` on a private socket instead of the "
                             "embedded server")
    parser.add_argument("--poll", type=float, default=0.0001,
                        help="seconds slept between two refresh() polls (default 0.0001)")
    parser.add_argument("--no-state", action="store_true",
                        help="skip W1 with a STATE_DIR (FSYNC everysec, always, never)")
    parser.add_argument("--state-only", action="store_true",
                        help="run only W1 in memory and with a STATE_DIR, paired per repeat")
    parser.add_argument("--no-huey", action="store_true",
                        help="skip the Huey + redis-server system")
    parser.add_argument("--w4-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--w5-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.w4_child:
        return w4_child()
    if args.w5_child:
        return bench_w5.launcher()
    warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (the baselines)
    os.chdir(ROOT)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    if args.no_state and args.state_only:
        parser.error("--no-state and --state-only contradict each other; give one")
    bench_report.report(args, METRICS, *run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
