"""The `stall` fault of `python -m stress`: the server SIGSTOPped for longer than CONNECT_TIMEOUT
at random times, then SIGCONTed (issue 15), and what the checker makes of it.

    Faults.tick (a fresh health sample, no restart pending) -> Stalls.tick: every --stall-every
        seconds (x 0.5..1.5): SIGSTOP the server for --stall-seconds (a range around the retry
        bound, 3 x CONNECT_TIMEOUT: some stalls end within it, some past it); the workers alive
        then are noted; a timer thread SIGCONTs it (resume_all() in the harness's finally too)
    clients: an enqueue that waited out the stall succeeds; one past the bound raises
        ServerStalled with the task id: the client looks the id up once the server answers
        (found: it is ours; not found twice, 1 s apart: enqueued again) -- client.py
    check(o): no worker that was alive at a stall exited without a reason the harness knows
        (its SIGKILL, a hog's recycling, a crash/hang task, a later server restart); every
        stall resumed. Lost / run twice / burned are the other invariants' business (a worker
        that exited over a stall would burn its task: WorkerLost where SUCCESSFUL was due).
"""

import contextlib
import os
import signal
import threading
import time

from django_tasks_shared.protocol.status import TIME_LIMIT_EXCEEDED, WORKER_LOST


class Stalls:
    def __init__(self, args, monitor, rng):
        self.every = args.stall_every
        self.low, self.high = args.stall_seconds
        self.monitor = monitor
        self.rng = rng
        self.stalls = []          # {"t", "pid", "seconds", "resumed_at", "workers"}
        self.current = None       # (psutil.Process, the stall's dict) while stopped
        self.lock = threading.Lock()
        self.next_at = time.monotonic() + self.every * rng.uniform(0.5, 1.5)

    @property
    def stalled(self):
        return self.current is not None

    def tick(self, health):
        import psutil

        now = time.monotonic()
        if self.current is not None or now < self.next_at:
            return
        pid = health["server"]["pid"]
        proc = self.monitor.servers.get(pid)
        if proc is None:
            return
        seconds = round(self.rng.uniform(self.low, self.high), 2)
        stall = {"t": time.time(), "pid": pid, "seconds": seconds, "resumed_at": None,
                 "workers": {str(w["pid"]): w["id"] for w in health["workers"]}}
        try:
            proc.send_signal(signal.SIGSTOP)  # psutil checks pid + create time
        except psutil.Error:
            return
        with self.lock:
            self.current = (proc, stall)
            self.stalls.append(stall)
        timer = threading.Timer(seconds, self.resume_all)
        timer.daemon = True
        timer.start()
        self.next_at = now + seconds + self.every * self.rng.uniform(0.5, 1.5)

    def resume_all(self):
        """SIGCONT the stopped server (the timer, and the harness's finally: never left)."""
        import psutil

        with self.lock:
            current, self.current = self.current, None
        if current is None:
            return
        proc, stall = current
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGCONT)
        stall["resumed_at"] = time.time()


def _explained_exits(o):
    """Worker ids whose exit the harness can account for."""
    why = {wid: "SIGKILLed by the harness" for wid in o.killed}
    why.update({wid: "retired (MAX_WORKER_MEMORY)" for wid in o.monitor.retiring_seen})
    for info in o.tasks.values():
        wids = info.get("worker_ids") or []
        if not wids:
            continue
        if info["w"] in ("crash", "hang") or info.get("err") in (WORKER_LOST,
                                                                    TIME_LIMIT_EXCEEDED):
            why.setdefault(wids[-1], f"its {info['w']} task ended {info.get('err')}")
        elif info["w"] == "hog" and info.get("status") == "SUCCESSFUL":
            why.setdefault(wids[-1], "recycled after a hog")
    return why


def check(o):
    """(ok, detail, failures, figures) of the stall fault."""
    stalls = o.faults.stalls.stalls
    bad = []
    if not stalls:
        bad.append("no stall was injected")
    explained = _explained_exits(o)
    seen, gone = set(), []
    for stall in stalls:
        if stall["resumed_at"] is None:
            bad.append(f"server {stall['pid']} stopped at {stall['t']:.3f} was never resumed")
        later_restart = any(r["t"] >= stall["t"] for r in o.restarts)
        for pid, wid in stall["workers"].items():
            if wid in seen:
                continue
            seen.add(wid)
            proc = o.monitor.workers.get(int(pid))
            alive = False
            if proc is not None:
                with contextlib.suppress(Exception):
                    alive = proc.is_running() and proc.status() != "zombie"
            if alive or wid in explained or later_restart:
                continue
            gone.append(wid)
            bad.append(f"worker {wid} (pid {pid}), alive when the server was stopped at "
                       f"{stall['t']:.3f}, exited with no reason the harness knows (a worker "
                       f"that gives up on a stalled server)")
    outcomes = o.stalled_enqueues
    adopted = sum(1 for how in outcomes.values() if how == "queued")
    not_stored = sum(1 for how in outcomes.values() if how == "not stored")
    unresolved = len(outcomes) - adopted - not_stored
    if unresolved:
        bad.append(f"{unresolved} enqueue(s) that raised ServerStalled were never resolved")
    durations = [s["seconds"] for s in stalls]
    resends = _resends(o.config.get("server_log"))
    figures = {"stalls": len(stalls), "stalled_seconds": round(sum(durations), 1),
               "shortest_s": min(durations, default=None),
               "longest_s": max(durations, default=None),
               "workers_alive_at_stalls": len(seen), "workers_exited_unexplained": len(gone),
               "enqueues_stalled": len(outcomes), "stalled_enqueues_queued": adopted,
               "stalled_enqueues_not_stored": not_stored, **resends}
    detail = (f"{len(stalls)} stall(s) of {min(durations, default=0):.1f}-"
              f"{max(durations, default=0):.1f} s ({figures['stalled_seconds']} s in all; "
              f"CONNECT_TIMEOUT {o.config.get('connect_timeout')} s, retry bound 3x); "
              f"{len(seen)} worker(s) alive at a stall, {len(gone)} exited unexplained; "
              f"{len(outcomes)} enqueue(s) raised ServerStalled with the id ({adopted} found "
              f"queued afterwards, {not_stored} not stored and enqueued again); workers resent "
              f"{resends['reports_resent']} report(s) and {resends['claims_resent']} claim(s)")
    return not bad, detail, bad, figures


def _resends(log_path):
    """Workers' resends, from the AUTOSTART server log (one warning per unanswered call)."""
    counts = {"reports_resent": 0, "claims_resent": 0}
    if not log_path or not os.path.exists(log_path):
        return counts
    with open(log_path, errors="replace") as f:
        for line in f:
            if "sending the report again" in line:
                counts["reports_resent"] += 1
            elif "sending the claim again" in line:
                counts["claims_resent"] += 1
    return counts


def time_allowance(stalls, info):
    """Seconds a task may have stayed RUNNING past TIME_LIMIT because of stalls: those that
    overlapped its run, plus the supervisor's REPORT_GRACE after each."""
    started = info.get("started_at")
    if started is None or not stalls:
        return 0.0
    end = started + info.get("ran_max", 0.0)
    overlap = [s for s in stalls if s["t"] <= end and (s["resumed_at"] or end) >= started]
    return sum(s["seconds"] + 2.0 for s in overlap)


def row(report, row):
    s = (report.get("faults") or {}).get("stall")
    if s:
        row("server stalls", f"{s['stalls']} injected ({s['shortest_s']}-{s['longest_s']} s, "
            f"{s['stalled_seconds']} s in all), {s['enqueues_stalled']} enqueue(s) past the "
            f"retry bound ({s['stalled_enqueues_queued']} queued, "
            f"{s['stalled_enqueues_not_stored']} not stored), "
            f"{s['workers_exited_unexplained']} worker exit(s) unexplained, "
            f"{s['reports_resent']} report(s) resent")
