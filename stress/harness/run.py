"""`python -m stress`: the stress harness with fault injection (see docs and stress/__main__.py).

    harness (this process)
      ├─ server: AUTOSTARTed on a private socket (or an existing one, --address); with
      │          --state-dir DIR every server it (re)starts restores from and journals into DIR
      ├─ monitor thread: health + server RSS every 0.25 s (stored results, workers, pids)
      ├─ fault loop: SIGKILL a random ready worker every --kill-every s; SIGKILL the server at
      │              evenly spaced points of the run (--restarts), clients AUTOSTART a new one;
      │              enospc: fill the STATE_DIR's tmpfs and free it at random times (disk.py)
      │              SIGSTOP the server for --stall-seconds every ~--stall-every s (stall.py)
      ├─ M client processes (spawn): enqueue, poll own ids, look up other clients' ids
      └─ checker: ledger files written by the tasks + what the clients saw + health samples
                  -> invariants, report table, --json (check.py; the STATE_DIR
                     rules, "lost = 0 except WorkerLost at a server SIGKILL": durable.py)
"""

import contextlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time

from stress.common.paths import ROOT

from . import disk as harness_disk
from . import stall as harness_stall
from .args import parse_args


def make_plan(args, mix):
    """(i, workload, priority, run_after delay) per task, exact proportions, shuffled."""
    total_weight = sum(mix.values())
    exact = {w: args.tasks * v / total_weight for w, v in mix.items()}
    counts = {w: int(x) for w, x in exact.items()}
    for w in sorted(exact, key=lambda w: exact[w] - counts[w], reverse=True):
        if sum(counts.values()) >= args.tasks:
            break
        counts[w] += 1
    rng = random.Random(args.seed)
    workloads = [w for w, n in counts.items() for _ in range(n)]
    rng.shuffle(workloads)
    # One task of each workload goes first, at top priority: every outcome is exercised
    # early, before any server restart can take it away.
    for w in sorted(counts, reverse=True):
        if counts[w]:
            workloads.remove(w)
            workloads.insert(0, w)
    firsts = len([w for w in counts if counts[w]])
    plan = []
    for i, w in enumerate(workloads):
        delay = 0.0
        if i >= firsts and w not in ("hang", "crash") and rng.random() * 100 < args.deferred:
            delay = round(rng.uniform(0.1, 1.0), 3)
        plan.append((i, w, 20 if i < firsts else rng.randint(-20, 19), delay))
    return plan, counts


class Monitor(threading.Thread):
    """Samples health and the server's RSS; remembers every server and worker process seen."""

    def __init__(self, backend, interval=0.25):
        super().__init__(name="stress-monitor", daemon=True)
        self.backend = backend
        self.interval = interval
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.samples = []
        self.latest = None
        self.latest_at = 0.0
        self.servers = {}       # pid -> psutil.Process (identity: pid + create time)
        self.generations = []   # [pid, started_at, first seen]
        self.workers = {}       # pid -> psutil.Process
        self.worker_pids = {}   # worker id -> pid
        self.retiring_seen = {}  # worker id -> retire reason seen in health
        self.states = {}        # server pid -> its latest health["state"] (STATE_DIR facts)
        self.unavailable = 0

    def run(self):
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)

    def sample(self):
        import psutil

        from django_tasks_shared.exceptions import ServerUnavailable

        try:
            health = self.backend.health()
        except ServerUnavailable:
            with self.lock:
                self.unavailable += 1
            return None
        now = time.time()
        server = health["server"]
        pid = server["pid"]
        with self.lock:
            if pid not in self.servers:
                with contextlib.suppress(psutil.Error):
                    self.servers[pid] = psutil.Process(pid)
                self.generations.append([pid, server["started_at"], now])
            for worker in health["workers"]:
                wpid = worker["pid"]
                self.worker_pids[worker["id"]] = wpid
                if wpid not in self.workers:
                    with contextlib.suppress(psutil.Error):
                        self.workers[wpid] = psutil.Process(wpid)
                if worker.get("retiring"):
                    self.retiring_seen[worker["id"]] = worker.get("retire_reason")
            self.states[pid] = health.get("state")
            rss = None
            proc = self.servers.get(pid)
            if proc is not None:
                with contextlib.suppress(psutil.Error):
                    rss = proc.memory_info().rss
            sup = server.get("supervisor") or {}
            self.samples.append({
                "t": now, "server_pid": pid, "rss": rss,
                "stored": health["results"]["stored"], "max": health["results"]["max"],
                # results kept past MAX_RESULTS while a dependent needs them (workflows)
                "held": (health.get("workflows") or {}).get("held_for_dependents", 0),
                "evicted": health["results"]["evicted"],
                "pending": health["pending"], "running": health["running"],
                "workers_alive": sup.get("workers_alive"), "workers": len(health["workers"])})
            self.latest, self.latest_at = health, time.monotonic()
        return health


def _ready_workers(health):
    return [w for w in health["workers"]
            if w["state"] in ("idle", "busy") and not w.get("retiring")]


class Faults:
    def __init__(self, args, monitor, total):
        self.args = args
        self.monitor = monitor
        self.total = total
        self.rng = random.Random(args.seed + 1)
        self.kills = []       # {"t", "worker_id", "pid", "task"}
        self.restarts = []    # {"t", "pid", "recovered_at", "new_pid"}
        self.next_kill = time.monotonic() + args.kill_every
        self.kill_misses = 0
        self.disk = None      # disk.DiskFaults with --faults enospc
        self.stalls = harness_stall.Stalls(args, monitor, self.rng)

    def tick(self, done):
        now = time.monotonic()
        with self.monitor.lock:
            health, fresh = self.monitor.latest, now - self.monitor.latest_at < 1.0
        if health is None or self.stalls.stalled:
            return
        pending_restart = self.restarts and self.restarts[-1]["recovered_at"] is None
        if self.disk is not None:
            self.disk.tick(restarting=pending_restart)
        if pending_restart:
            last = self.restarts[-1]
            if health["server"]["pid"] != last["pid"] and fresh:
                last["recovered_at"] = time.time()
                last["new_pid"] = health["server"]["pid"]
                last["recovery_s"] = round(last["recovered_at"] - last["t"], 3)
            return
        if "restart-server" in self.args.fault_set and len(self.restarts) < self.args.restarts:
            threshold = self.total * (len(self.restarts) + 1) / (self.args.restarts + 1)
            if done >= threshold and fresh and not (self.disk and self.disk.full):
                self.restart(health)  # (not on a full disk: no server could start)
                return
        if "stall" in self.args.fault_set and fresh:
            self.stalls.tick(health)
            if self.stalls.stalled:
                return
        if "kill" in self.args.fault_set and now >= self.next_kill and fresh:
            # A miss (no worker mid-way through a sleep/cpu task) is retried soon, not skipped.
            self.next_kill = now + (self.args.kill_every if self.kill(health) else 0.1)

    def kill(self, health):
        import psutil

        try:  # a fresh snapshot: the monitor's may be 0.25 s old, long enough for new claims
            health = self.monitor.backend.health()
        except Exception:
            self.kill_misses += 1
            return False
        # Kill only workers in the middle of a task that takes a while (sleep, cpu): spare the
        # ones running hang/hog/crash (they end their own way) and idle or noop ones (they may
        # claim a hang task before the signal lands), so the supervisor's own outcomes
        # (TimeLimitExceeded, recycling, WorkerLost) stay covered.
        candidates = [w for w in _ready_workers(health) if w.get("current_task") and
                      w["current_task"]["name"].endswith((".sleep", ".cpu", ".flow_limited",
                                                          ".flow_unique"))]
        if not candidates:
            self.kill_misses += 1
            return False
        worker = self.rng.choice(candidates)
        proc = self.monitor.workers.get(worker["pid"])
        if proc is None:
            self.kill_misses += 1
            return False
        try:
            if proc.ppid() != health["server"]["pid"]:
                self.kill_misses += 1
                return False
            proc.send_signal(signal.SIGKILL)  # psutil checks pid + create time
        except psutil.Error:
            self.kill_misses += 1
            return False
        task = worker.get("current_task")
        self.kills.append({"t": time.time(), "worker_id": worker["id"], "pid": worker["pid"],
                           "task": task["id"] if task else None})
        return True

    def restart(self, health):
        import psutil

        pid = health["server"]["pid"]
        proc = self.monitor.servers.get(pid)
        if proc is None:
            return
        try:
            how = self.args.restart_signal
            if how == "both":
                how = ("kill", "term")[len(self.restarts) % 2]
            proc.send_signal(signal.SIGTERM if how == "term" else signal.SIGKILL)
        except psutil.Error:
            return
        self.restarts.append({"t": time.time(), "pid": pid, "signal": how, "started_at":
                              health["server"]["started_at"], "recovered_at": None,
                              "new_pid": None})


def progress_line(done, lost, total, enq, started, faults, health, width=28):
    frac = (done + lost) / total if total else 1.0
    bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
    elapsed = time.monotonic() - started
    rate = (done + lost) / elapsed if elapsed > 0 else 0.0
    workers = "?"
    if health is not None:
        sup = health["server"].get("supervisor") or {}
        workers = f"{sup.get('workers_alive', '?')}/{sup.get('workers_expected', '?')}"
    return (f"\r[{bar}] {frac * 100:5.1f}% {done + lost}/{total} done ({enq} enqueued) "
            f"{rate:6.0f}/s  kills {len(faults.kills)}  restarts {len(faults.restarts)}  "
            f"stalls {len(faults.stalls.stalls)}  workers {workers}  {elapsed:5.1f}s ")


def stop_pid_tree(monitor, owned_servers):
    """Stop the servers we started or caused (SIGTERM, then SIGKILL), then stray workers."""
    import psutil

    for pid, proc in list(monitor.servers.items()):
        if pid not in owned_servers:
            continue
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    for pid, proc in list(monitor.servers.items()):
        if pid not in owned_servers:
            continue
        try:
            proc.wait(10)
        except psutil.TimeoutExpired:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
                proc.wait(5)
        except psutil.Error:
            pass
    external = set(monitor.servers) - set(owned_servers)
    for proc in list(monitor.workers.values()):
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.ppid() not in external:
                proc.send_signal(signal.SIGKILL)  # psutil checks pid + create time


def main(argv=None):
    args = parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="stress-")
    ledger = os.path.join(workdir, "ledger")
    os.makedirs(ledger)
    os.makedirs(os.path.join(workdir, "flows"))  # the workflow tasks' spans (flows.py)
    address = args.address or os.path.join(workdir, "tasks.sock")
    disk_mount = None
    if "enospc" in args.fault_set:
        disk_mount = harness_disk.setup(args, workdir)
        args.state_dir = os.path.join(disk_mount, "state")
        args.fsync = args.fsync or "everysec"
    options = {"WORKERS": args.workers, "TIME_LIMIT": args.time_limit,
               "MAX_WORKER_MEMORY": args.max_worker_memory, "MAX_RESULTS": args.max_results,
               "AUTOSTART": True, "CONNECT_TIMEOUT": args.connect_timeout}
    if disk_mount and "stall" not in args.fault_set:
        # A reply held through a fill (0.5-3 s, then ~1 s to resume) gets through in one call;
        # with `stall` the short CONNECT_TIMEOUT stays and the clients resolve it by id.
        options["CONNECT_TIMEOUT"] = max(args.connect_timeout, 10.0)
    if args.state_dir:
        options.update(STATE_DIR=args.state_dir, FSYNC=args.fsync)
        if args.journal_limit:
            options["JOURNAL_LIMIT"] = args.journal_limit
    os.environ["DJANGO_SETTINGS_MODULE"] = "stress.harness.settings"
    os.environ["STRESS_ADDRESS"] = address
    os.environ["STRESS_OPTIONS"] = json.dumps(options)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)

    import django

    django.setup()
    from django.tasks import task_backends

    from django_tasks_shared.client import launcher
    from django_tasks_shared.exceptions import ServerUnavailable

    from . import check as harness_check
    from . import client as harness_client
    from . import report as harness_report

    backend = task_backends["default"]
    monitor = Monitor(backend)
    faults = None
    owned_servers = set()
    clients = []
    progress = not args.no_progress
    try:
        try:
            backend.client.call("ping")
            external = True
        except ServerUnavailable:
            external = False
            launcher.ensure_server(backend.config)
        health = monitor.sample()
        if health is None:
            print(f"stress: no server answers at {address}", file=sys.stderr)
            return 2
        if not external:
            owned_servers.add(health["server"]["pid"])
        meta = health["server"]
        config = {
            "address": meta["address"], "external": external,
            "workers": meta["workers_expected"], "threads": meta["threads"],
            "time_limit": meta["time_limit"], "max_worker_memory": meta["max_worker_memory"],
            "max_results": health["results"]["max"], "clients": args.clients,
            "tasks": args.tasks, "mix": args.mix, "faults": sorted(args.fault_set),
            "kill_every": args.kill_every, "restarts": args.restarts, "seed": args.seed,
            "restart_signal": args.restart_signal, "flows": args.flows,
            "window": args.window, "deferred_pct": args.deferred,
            "connect_timeout": args.connect_timeout,
            "stall_every": args.stall_every, "stall_seconds": list(args.stall_seconds),
            "server_log": None if external else address + ".log",
            "state_dir": (health.get("state") or {}).get("dir"),
            "fsync": (health.get("state") or {}).get("fsync")}
        mix = dict(args.mix_weights)
        for name, option in (("hang", "time_limit"), ("hog", "max_worker_memory")):
            if mix.get(name) and not config[option]:
                print(f"stress: the server has no {option.upper()}: dropping {name!r} from the "
                      "mix", file=sys.stderr)
                mix[name] = 0
        plan, counts = make_plan(args, mix)
        config["counts"] = counts
        if not progress:
            print(f"stress: {args.tasks} tasks, {args.clients} clients, server {address}",
                  file=sys.stderr)

        ctx = multiprocessing.get_context("spawn")
        counters = ctx.Array("q", 4 * args.clients)
        monitor.start()
        faults = Faults(args, monitor, args.tasks)
        if disk_mount:
            faults.disk = harness_disk.DiskFaults(args, disk_mount, monitor)
        started = time.monotonic()
        wall_start = time.time()
        for idx in range(args.clients):
            params = {"idx": idx, "clients": args.clients, "plan": plan[idx::args.clients],
                      "workdir": workdir, "ledger": ledger, "seed": args.seed,
                      "window": args.window, "poll_interval": 0.05, "lookups": 3,
                      "max_wait": args.max_wait, "flows": args.flows,
                      "flows_dir": os.path.join(workdir, "flows"),
                      "max_worker_memory": config["max_worker_memory"] or 0}
            proc = ctx.Process(target=harness_client.main, args=(params, counters),
                               name=f"stress-client-{idx}")
            proc.start()
            clients.append(proc)
        last_draw = 0.0
        while any(p.is_alive() for p in clients):
            with counters.get_lock():
                values = list(counters)
            enq = sum(values[0::4])
            done, lost = sum(values[1::4]), sum(values[2::4])
            if done + lost < args.tasks:
                faults.tick(done + lost)
            elif faults.restarts and faults.restarts[-1]["recovered_at"] is None:
                faults.tick(done + lost)
            if progress and time.monotonic() - last_draw >= 0.2:
                sys.stderr.write(progress_line(done, lost, args.tasks, enq, started, faults,
                                               monitor.latest))
                sys.stderr.flush()
                last_draw = time.monotonic()
            time.sleep(0.05)
        run_seconds = time.monotonic() - started
        if faults.disk is not None:
            faults.disk.finish()  # the disk freed, and the server seen resuming
        with counters.get_lock():
            values = list(counters)
        if progress:
            sys.stderr.write(progress_line(sum(values[1::4]), sum(values[2::4]), args.tasks,
                                           sum(values[0::4]), started, faults,
                                           monitor.latest) + "\n")
        for p in clients:
            p.join(5)
        client_codes = [p.exitcode for p in clients]
        # A restart whose recovery the fault loop did not see yet: look once more.
        deadline = time.monotonic() + 20
        while faults.restarts and faults.restarts[-1]["recovered_at"] is None and \
                time.monotonic() < deadline:
            with contextlib.suppress(ServerUnavailable):
                backend.call("ping")  # AUTOSTART, as any client would
            monitor.sample()
            faults.tick(args.tasks)
            time.sleep(0.1)
        outputs = []
        for idx in range(args.clients):
            path = os.path.join(workdir, f"client-{idx}.json")
            try:
                with open(path) as f:
                    outputs.append(json.load(f))
            except (OSError, ValueError):
                outputs.append(None)
        # Workers back to the configured count (replacements of the last kills take a moment),
        # and the workers of the last hogs recycled (the supervisor samples RSS every 0.5 s).
        to_recycle = harness_check.workers_to_recycle(outputs)
        final_health = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            final_health = monitor.sample()
            if final_health is not None and harness_check.workers_restored(final_health)[0] \
                    and not to_recycle & {w["id"] for w in final_health["workers"]}:
                break
            time.sleep(0.25)
        monitor.stop.set()
        monitor.join(5)
        for gen in monitor.generations:
            if gen[0] not in owned_servers and (not external or gen is not
                                                monitor.generations[0]):
                owned_servers.add(gen[0])
        report = harness_check.check(
            config=config, outputs=outputs, client_codes=client_codes, ledger_dir=ledger,
            monitor=monitor, faults=faults, final_health=final_health,
            run_seconds=run_seconds, wall_start=wall_start)
        text = harness_report.render(report)
        print(text)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2, sort_keys=True)
        if args.keep:
            print(f"work directory kept: {workdir}")
        return 0 if report["passed"] else 1
    finally:
        if faults is not None:
            faults.stalls.resume_all()  # never leave a server stopped
        for p in clients:
            if p.is_alive():
                with contextlib.suppress(OSError):
                    os.kill(p.pid, signal.SIGKILL)
                p.join(5)
        monitor.stop.set()
        for gen in monitor.generations:
            if gen[0] not in owned_servers and (not args.address or gen is not
                                                monitor.generations[0]):
                owned_servers.add(gen[0])
        stop_pid_tree(monitor, owned_servers)
        if disk_mount:
            harness_disk.teardown(disk_mount)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
