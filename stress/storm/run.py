"""`python -m stress.storm`: a connection storm against a real `tasks_server`, measured.

    storm (this process)
      ├─ server: `tasks_server --grace G` on a private unix socket in a temp dir, WORKERS=2,
      │          MAX_CONNECTIONS raised (8192) so that 5,000 fit; or --address of a running one
      ├─ probe:  stress/storm/probe.py, a process of its own: enqueue a no-op + wait(), every
      │          10 ms, timed (the latency a real client sees during the storm)
      ├─ sampler thread: psutil on the server pid every 50 ms (num_threads, memory_info().rss)
      └─ phases (--phases; stress/storm/net.py opens the sockets from one selectors loop),
         each after the server's threads are back at the baseline (else the rest is skipped):
           raw     N connections at once, held --hold s, closed at once
           half    N at once, N/2 of them through the whole handshake; held; closed at once
           idle    N/2 handshaken connections at once, held: RSS delta / connection
         then SIGTERM, with the idle ones still open (every web process holds connections):
         the seconds until the server has exited
      -> report (stress/storm/report.py): counts, timings, probe p50/p99, server threads and
         RSS at baseline / peak / 2 s after, cost per idle connection, SIGTERM exit time,
         PASS/MISS per target of issue 9; --json FILE

Exit status 0 when every target passes, 1 when one misses, 2 when no server could be used.
"""

import argparse
import contextlib
import json
import os
import resource
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from stress.common.paths import ROOT

from .net import close_all, open_storm
from .report import BACK_WITHIN, percentiles, print_report, verdicts

# RSS may stay this much above its baseline and still count as "back". Memory a server frees
# is not all returned to the OS at once (glibc and pymalloc keep some arenas), and that is not
# a leak; 8 MiB over 5,000 connections is 1.7 KiB each: any real per-connection leftover
# (a thread stack, a buffer, a record) is far larger, so it still shows.
RSS_TOLERANCE = 8 << 20


class Sampler(threading.Thread):
    """(monotonic time, threads, rss) of one process every `interval` seconds."""

    def __init__(self, pid, interval=0.05):
        super().__init__(name="sampler", daemon=True)
        self.proc, self.interval = psutil.Process(pid), interval
        self.samples, self.stopped = [], threading.Event()

    def run(self):
        while not self.stopped.is_set():
            with contextlib.suppress(psutil.Error):
                self.samples.append((time.monotonic(), self.proc.num_threads(),
                                     self.proc.memory_info().rss))
            self.stopped.wait(self.interval)

    def between(self, start, end=float("inf")):
        return [s for s in list(self.samples) if start <= s[0] <= end]

    def steady(self, seconds):
        """Threads (max) and RSS (median) over the next `seconds`."""
        start = time.monotonic()
        time.sleep(seconds)
        window = self.between(start)
        rss = sorted(s[2] for s in window)
        return max(s[1] for s in window), rss[len(rss) // 2]


class NoServer(Exception):
    """No server to storm: the run exits 2."""


def raise_nofile(need):
    """Soft RLIMIT_NOFILE up to the hard one (and the hard one too when root and short)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        with contextlib.suppress(ValueError, OSError):  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return need
        raise SystemExit(f"storm: RLIMIT_NOFILE hard limit {hard} < {need} needed "
                         f"(run as root, or `ulimit -Hn {need}`)")
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def child_env(address, options):
    env = {k: v for k, v in os.environ.items() if k not in ("STRESS_ADDRESS", "STRESS_OPTIONS")}
    env.update(DJANGO_SETTINGS_MODULE="stress.harness.settings", STRESS_ADDRESS=address,
               STRESS_OPTIONS=json.dumps(options),
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p))
    return env


def stop_process(popen, timeout=10.0):
    """SIGTERM by pid, then SIGKILL; then every descendant it left behind, by pid."""
    try:
        descendants = psutil.Process(popen.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    if popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)
    for proc in descendants:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def read_line(popen, timeout):
    ready, _, _ = select.select([popen.stdout], [], [], timeout)
    return popen.stdout.readline().strip() if ready else ""


def ping(address, authkey, timeout=1.0):
    from django_tasks_shared.client.connection import StoreClient
    from django_tasks_shared.exceptions import ServerUnavailable

    client = StoreClient(address, authkey, timeout=timeout)
    try:
        return client.call("ping"), None
    except ServerUnavailable as exc:
        return None, str(exc)
    finally:
        client.close()


def _slowest(samples, start, end, count=3):
    """[(seconds after the phase began, ms)] of its slowest probe calls: when in the phase
    (opening, held, after the close) the client waited."""
    inside = [s for s in samples if start <= s[0] <= end]
    inside.sort(key=lambda s: float("inf") if s[1] is None else s[1], reverse=True)
    return [(round(s[0] - start, 2), None if s[1] is None else round(s[1] * 1000, 1))
            for s in inside[:count]]


class StormRun:
    def __init__(self, args):
        self.args, self.report, self.children = args, {"args": vars(args).copy()}, []
        self.held = []  # the idle phase's connections, open until after the SIGTERM
        self.windows = []  # [name, start, end] of the storm phases: the probe samples that count
        self.server = self.probe = self.sampler = self.directory = None

    # -- processes ---------------------------------------------------------------------------
    def start(self):
        args = self.args
        options = {"AUTOSTART": False}
        if args.address:
            from django_tasks_shared.client.options import derive_authkey, parse_address

            self.address = parse_address(args.address)
            if args.authkey:
                options["AUTHKEY"] = args.authkey
                self.authkey = args.authkey.encode()
            else:
                from stress.harness.settings import SECRET_KEY

                self.authkey = derive_authkey(SECRET_KEY, "default")
            self.env = child_env(args.address, options)
        else:
            self.directory = tempfile.mkdtemp(prefix="dts-storm-")
            self.address = os.path.join(self.directory, "tasks.sock")
            key = secrets.token_hex(16)
            self.authkey = key.encode()
            options.update(AUTHKEY=key, WORKERS=args.workers)
            if args.max_connections is not None:
                options["MAX_CONNECTIONS"] = args.max_connections
            self.env = child_env(self.address, options)
            self.log = open(os.path.join(self.directory, "server.log"), "w+")  # noqa: SIM115
            self.server = subprocess.Popen(
                [sys.executable, "-m", "django", "tasks_server", "--grace", str(args.grace)],
                cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
            self.children.append(self.server)
        deadline = time.monotonic() + 30
        while (pid := ping(self.address, self.authkey)[0]) is None:
            if (self.server and self.server.poll() is not None) or time.monotonic() > deadline:
                raise NoServer(f"no task server answers at {self.address}")
            time.sleep(0.1)
        self.pid = pid
        self.probe = subprocess.Popen(
            [sys.executable, "-m", "stress.storm.probe"], cwd=ROOT, env=dict(
                self.env, STORM_PROBE_INTERVAL=str(args.probe_interval)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.children.append(self.probe)
        if read_line(self.probe, 60) != "ready":  # the workers ran its warm-up tasks
            raise NoServer("the probe client could not run tasks on the server")
        self.sampler = Sampler(pid)
        self.sampler.start()

    def stop_probe(self):
        if self.probe.poll() is not None:
            return []
        self.probe.stdin.write("stop\n")
        self.probe.stdin.flush()
        line = read_line(self.probe, 30)
        return json.loads(line) if line else []

    def stop(self):
        if self.sampler:
            self.sampler.stopped.set()
        for popen in self.children:
            stop_process(popen)
        if self.directory:
            self.log.seek(0)
            self.report["server_log_tail"] = self.log.read()[-2000:]
            self.log.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- phases ------------------------------------------------------------------------------
    def baseline(self):
        time.sleep(1.0)  # the readiness probes' connections are gone
        self.base_threads, self.base_rss = self.sampler.steady(1.0)
        self.report["baseline"] = {"threads": self.base_threads, "rss": self.base_rss}

    def storm_phase(self, name, handshakes):
        """Open N at once (`handshakes` of them authenticate), hold, close at once, and see
        how long the server takes to get back to its baseline."""
        args, phase = self.args, {}
        started = time.monotonic()
        storm = open_storm(self.address, self.authkey, args.connections, handshakes,
                           timeout=args.open_timeout)
        phase["counts"] = storm.counts()
        if storm.refused:  # what a real client is told while the storm holds the slots
            phase["real_client_refused"] = ping(self.address, self.authkey, timeout=5)[1]
        time.sleep(args.hold)
        held = storm.raw + storm.idle
        phase["close_s"] = round(close_all(held), 3)
        closed = time.monotonic()
        phase["closed_at_s"] = round(closed - started, 2)
        phase.update(self.back_to_baseline(started, closed))
        self.windows.append([name, started, closed + BACK_WITHIN])
        self.report[name] = phase

    def back_to_baseline(self, started, closed):
        """Peak threads/RSS since `started`; when both were back after `closed`, and their
        values BACK_WITHIN s after it (waits up to --settle s for the return)."""
        limit_rss = self.base_rss + RSS_TOLERANCE
        back_at = None
        deadline = closed + max(self.args.settle, BACK_WITHIN + 0.2)
        while time.monotonic() < deadline:
            time.sleep(0.05)
            recent = self.sampler.between(closed)
            back = [s for s in recent if s[1] <= self.base_threads and s[2] <= limit_rss]
            if back:
                back_at = back[0][0] - closed
                if time.monotonic() > closed + BACK_WITHIN + 0.2:
                    break
        window = self.sampler.between(started)
        after = min(window, key=lambda s: abs(s[0] - (closed + BACK_WITHIN)))
        return {"peak_threads": max(s[1] for s in window), "peak_rss": max(s[2] for s in window),
                "threads_after_2s": after[1], "rss_after_2s": after[2],
                "back_after_s": None if back_at is None else round(back_at, 2)}

    def recovered(self):
        """Wait (up to --recover s) for the thread count to be back at its baseline, so that
        the next phase does not measure the leftovers of the last one. The probe's samples
        until then count as "during the storm": the aftermath is the storm's doing."""
        started = time.monotonic()
        back = False
        while not back and time.monotonic() < started + self.args.recover:
            latest = self.sampler.samples[-1]
            back = latest[0] > started and latest[1] <= self.base_threads
            time.sleep(0.1)
        if self.windows:
            self.windows[-1][2] = max(self.windows[-1][2], time.monotonic())
        return back

    def idle_phase(self):
        """N/2 authenticated idle connections at once, held: their RSS cost. They stay open
        for the SIGTERM (in self.held)."""
        args, phase = self.args, {}
        _, before = self.sampler.steady(0.5)  # what is left from the storms is not theirs
        started = time.monotonic()
        storm = open_storm(self.address, self.authkey, args.connections // 2,
                           args.connections // 2, timeout=args.open_timeout)
        self.held = storm.raw + storm.idle
        phase["counts"] = storm.counts()
        time.sleep(0.5)  # threads started, buffers allocated
        threads, rss = self.sampler.steady(1.0)
        n = storm.handshaken
        # Against the baseline from before any storm, not `before`: memory the earlier storms
        # freed stays in the allocator and would be reused for free here. So this is an upper
        # bound after a raw and a half storm; `--phases idle` measures a fresh server.
        phase.update(rss_before=before, rss_held=rss, threads_held=threads,
                     cost_bytes=round((rss - self.base_rss) / n) if n else None,
                     threads_per_connection=round((threads - self.base_threads) / n, 3)
                     if n else None)
        self.windows.append(["idle", started, time.monotonic()])
        self.report["idle"] = phase

    def sigterm(self):
        """Seconds from SIGTERM until the server process is gone (capped: --sigterm-wait)."""
        if self.server.poll() is not None:  # it died during the storm: nothing to measure
            self.report["exited_before_sigterm"] = self.server.returncode
            return None
        started = time.monotonic()
        self.server.send_signal(signal.SIGTERM)
        try:
            self.server.wait(self.args.sigterm_wait)
        except subprocess.TimeoutExpired:
            return None  # still running: stop() kills it
        return round(time.monotonic() - started, 2)

    def probe_report(self, samples):
        during = [s for s in samples if any(a <= s[0] <= b for _, a, b in self.windows)]
        first = self.windows[0][1] if self.windows else float("inf")
        return {"before": percentiles([s for s in samples if s[0] < first]),
                "during": percentiles(during),
                "phases": {name: percentiles([s for s in samples if a <= s[0] <= b])
                           | {"slowest": _slowest(samples, a, b)}
                           for name, a, b in self.windows},
                "errors": sorted({s[2] for s in during if s[2]})[:5]}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m stress.storm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=5000, help="N (default 5000)")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds a storm is held")
    parser.add_argument("--address", help="a running server instead of a started one")
    parser.add_argument("--authkey", help="its OPTIONS['AUTHKEY'] (default: derived from "
                                          "stress.harness.settings' SECRET_KEY)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--grace", type=float, default=2.0, help="tasks_server --grace")
    parser.add_argument("--max-connections", type=int, default=8192,
                        help="MAX_CONNECTIONS of the started server (0: the default, 4096)")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds to wait for the return to baseline after a close")
    parser.add_argument("--recover", type=float, default=120.0,
                        help="seconds to wait for the server's threads to be back at the "
                             "baseline before the next phase (else the rest is skipped)")
    parser.add_argument("--sigterm-wait", type=float, default=90.0,
                        help="seconds to wait for the exit after SIGTERM before SIGKILL")
    parser.add_argument("--open-timeout", type=float, default=60.0,
                        help="seconds for every connection of a storm to get its answer")
    parser.add_argument("--probe-interval", type=float, default=0.01)
    parser.add_argument("--phases", default="raw,half,idle",
                        help="which phases to run, in this order (default raw,half,idle)")
    parser.add_argument("--json", help="write the report here too")
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not args.phases or set(args.phases) - {"raw", "half", "idle"}:
        parser.error("--phases takes raw, half and idle")
    if args.max_connections == 0:
        args.max_connections = 4096  # the server's default (config.py)
    if args.address:
        args.max_connections = None  # unknown: not ours
    return args


def main(argv=None):
    args = parse_args(argv)
    # SIGTERM (a test's timeout, a CI job stopped) unwinds through the `finally` below, so the
    # server, its workers and the probe are stopped by pid rather than left behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    raise_nofile(args.connections + 1000)
    run, failed = StormRun(args), None
    try:
        run.start()
        run.report["server_pid"] = run.pid
        run.baseline()
        for i, name in enumerate(args.phases):
            if i and not run.recovered():
                run.report["skipped"] = (
                    f"{name} and later phases not run: {args.recover:g} s after the previous "
                    f"phase the server still ran {run.sampler.samples[-1][1]} threads "
                    f"(baseline {run.base_threads})")
                break
            if name == "idle":
                run.idle_phase()
            else:
                run.storm_phase(name, args.connections // 2 if name == "half" else 0)
        else:
            if args.phases[-1] != "idle":
                run.recovered()  # the probe's samples of the aftermath count too
        run.report["probe"] = run.probe_report(run.stop_probe())
        # With the idle connections still open: every web process holds its connections.
        run.report["sigterm_exit_s"] = run.sigterm() if run.server else None
    except NoServer as exc:
        failed = exc
    finally:
        close_all(run.held)
        run.stop()
    if failed is not None:
        print(f"storm: {failed}\n{run.report.get('server_log_tail', '')}", file=sys.stderr)
        return 2
    report = run.report
    report["verdicts"] = verdicts(report, args)
    report["passed"] = all(v["result"] != "MISS" for v in report["verdicts"])
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
