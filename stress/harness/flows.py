"""The workflow workload of the stress harness: unique keys, limits and dependencies, under the
same faults as the rest (worker SIGKILLs, server restarts), checked from spans the tasks write.

    client.py ──Flows.step()──> per client, --flows items, spread over its plan (one after every
        len(plan) / flows of its enqueues, the rest at the end), so they meet the faults:
        unique   flow_unique(key) over FLOW_KEYS keys shared by every client (duplicates get
                 the holder's id: counted)
        limited  flow_limited: @limit(concurrency=2)        rated  flow_rated: @limit(rate="8/s")
        chain    flow_step parent -> after([parent], flow_step) (every 4th parent fails: its
                 dependent must end DependencyFailed without running)
      ──Flows.poll()──> get_many of its flow ids until each is final -> client-<n>.json "flows"
    tasks.py: each run appends "start <id> <t> <kind> <key>" and "end <id> <t>" to
        <workdir>/flows/<pid>.spans (one os.write per line: never torn)
    check() ──> invariants: never two of one unique key running at once; never more than the
        concurrency limit running; never more starts in any window than the rate; no dependent
        started before its parents ended, and none ran after a failed parent; every flow task
        final (or lost with a server restart, without STATE_DIR)

A span without an "end" line (its worker was SIGKILLed, or its server) ends at the time the
server recorded its end (WorkerLost: after the process died), or at the first server restart
after it started when its record is gone with that server.
"""

import glob
import os
import time

from .tasks import FLOW_CONCURRENCY, FLOW_RATE

FLOW_KEYS = 3
DEPENDENCY_FAILED = "django_tasks_shared.exceptions.DependencyFailed"
WORKER_LOST = "django_tasks_shared.exceptions.WorkerLost"
SLACK = 0.05  # seconds: one host's clock read in different processes


class Flows:
    """A client's workflow tasks (client.py calls start(), poll(), output())."""

    def __init__(self, client, count, directory):
        self.client, self.count, self.directory = client, count, directory
        self.every = max(1, len(client.p["plan"]) // max(1, count))  # plan enqueues per item
        self.n = 0             # items enqueued (or tried) so far
        self.items = []        # [kind, id, extra] per enqueue call (extra: key, or parent id)
        self.outstanding = set()
        self.final = {}        # id -> {status, err, started_at, finished_at}
        self.errors = []

    def step(self, enqueued, rest=False):
        """After the client's `enqueued`-th plan enqueue: the next item when it is due (all
        that are left with rest=True)."""
        while self.n < self.count and (rest or enqueued >= (self.n + 1) * self.every):
            self._one(self.n)
            self.n += 1
            if not rest:
                return

    def _one(self, n):
        from django_tasks_shared import after

        from . import tasks

        rng, d = self.client.rng, self.directory
        kind = ("unique", "limited", "rated", "chain")[n % 4]
        try:
            if kind == "unique":
                key = f"u{rng.randrange(FLOW_KEYS)}"
                result = tasks.flow_unique.enqueue(d, key, round(rng.uniform(0.1, 0.3), 3))
                self.items.append([kind, result.id, key])
            elif kind == "limited":
                result = tasks.flow_limited.enqueue(d, round(rng.uniform(0.1, 0.3), 3))
                self.items.append([kind, result.id, None])
            elif kind == "rated":
                result = tasks.flow_rated.enqueue(d)
                self.items.append([kind, result.id, None])
            else:
                parent = tasks.flow_step.enqueue(d, 0.1, fail=(n // 4) % 4 == 3)
                self.items.append(["parent", parent.id, None])
                self.outstanding.add(parent.id)
                result = after([parent], tasks.flow_step, d, 0.05)
                self.items.append([kind, result.id, parent.id])
            self.outstanding.add(result.id)
        except Exception as exc:  # ServerUnavailable during a restart: counted, not fatal
            self.errors.append(f"{time.time():.3f} {kind}: {type(exc).__name__}: {exc}")

    def poll(self):
        if not self.outstanding:
            return
        ids = sorted(self.outstanding)
        records = self.client.call("get_many", ids)
        for task_id, record in zip(ids, records, strict=True):
            if record is None:
                self.final[task_id] = {"status": None, "gone_at": time.time()}
            elif record["status"] in ("SUCCESSFUL", "FAILED"):
                errors = record["errors"]
                self.final[task_id] = {
                    "status": record["status"], "started_at": record["started_at"],
                    "finished_at": record["finished_at"], "worker_ids": record["worker_ids"],
                    "err": errors[-1]["exception_class_path"] if errors else None,
                    "msg": (errors[-1]["traceback"].strip().splitlines() or [""])[-1][:300]
                    if errors else None}
            else:
                continue
            self.outstanding.discard(task_id)

    def output(self):
        return {"items": self.items, "final": self.final, "errors": self.errors,
                "unfinished": sorted(self.outstanding)}


# ---- the checker ------------------------------------------------------------------------------

def read_spans(directory):
    """id -> {"kind", "key", "start", "end" (None: no end line), "runs"}"""
    spans = {}
    for path in glob.glob(os.path.join(directory, "*.spans")):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if parts[:1] == ["start"] and len(parts) == 5:
                    span = spans.setdefault(parts[1], {"kind": parts[3], "key": parts[4],
                                                       "start": None, "end": None, "runs": 0})
                    span["runs"] += 1
                    span["start"] = float(parts[2])
                elif parts[:1] == ["end"] and len(parts) == 3 and parts[1] in spans:
                    spans[parts[1]]["end"] = float(parts[2])
    return spans


def _invariant(name, ok, detail, failures=()):
    return {"name": name, "ok": bool(ok), "detail": detail, "failures": list(failures)[:20]}


def _interval(span, final, restarts):
    """(start, end) covering both the server's RUNNING interval (its record: started when it
    was handed out, finished when the server ended it or took the worker's report) and the run
    the task saw (its span); end None when neither says (see the module docstring)."""
    start = final.get("started_at") or span["start"]
    if final.get("finished_at") is not None:
        return start, max(final["finished_at"], span["end"] or 0.0)
    if span["end"] is not None:
        return start, span["end"]
    later = [r["t"] for r in restarts if r["t"] >= span["start"] - SLACK]
    return start, (min(later) if later else None)


def _most_at_once(intervals):
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = peak = 0
    for _, delta in events:
        now += delta
        peak = max(peak, now)
    return peak


def server_victims(outputs):
    """{dead server pid: workflow tasks that ended WorkerLost with it} (durable.py)."""
    from .durable import server_victim

    # By task id: clients that enqueued one unique key got the same task, and each of them
    # reports its end (counted per client, one interrupted task looked like several).
    finals = {}
    for out in outputs:
        finals.update(((out or {}).get("flows") or {}).get("final", {}))
    counts: dict[int, int] = {}
    for final in finals.values():
        pid = server_victim(final)
        if pid is not None:
            counts[pid] = counts.get(pid, 0) + 1
    return counts


def check(outputs, spans_dir, restarts, durable):
    """The workflow invariants, from the clients' outputs and the spans."""
    items, final, unfinished, errors = [], {}, [], []
    for out in outputs:
        flows = (out or {}).get("flows")
        if not flows:
            continue
        items += flows["items"]
        final.update(flows["final"])
        unfinished += flows["unfinished"]
        errors += flows["errors"]
    spans = read_spans(spans_dir)
    if not items:
        return []
    kinds = {task_id: kind for kind, task_id, _ in items}
    intervals, open_ended = {}, []
    for task_id, span in spans.items():
        start, end = _interval(span, final.get(task_id, {}), restarts)
        if end is None:
            open_ended.append(task_id)
            continue
        intervals[task_id] = (start, end)

    # 1. unique: never two of one key running at once
    bad = []
    by_key: dict[str, list] = {}
    for task_id, span in spans.items():
        if span["kind"] == "unique" and task_id in intervals:
            by_key.setdefault(span["key"], []).append((intervals[task_id], task_id))
    for key, runs in by_key.items():
        runs.sort()
        for ((s1, e1), a), ((s2, _), b) in zip(runs, runs[1:], strict=False):
            if s2 + SLACK < e1:
                bad.append(f"key {key}: {b} started at {s2:.3f} while {a} ran ({s1:.3f}-"
                           f"{e1:.3f})")
    lost = {kind: sum(1 for i, s in spans.items() if s["kind"] == kind and final.get(
        i, {}).get("err") == WORKER_LOST) for kind in ("unique", "limited")}
    unique_calls = [i for i in items if i[0] == "unique"]
    distinct = {i[1] for i in unique_calls}
    reruns = [i for i, s in spans.items() if s["runs"] > 1]
    bad += [f"{i} ran {spans[i]['runs']} times" for i in reruns]
    invariants = [_invariant(
        "unique: never two tasks of one key running at once", not bad,
        f"{len(unique_calls)} enqueues of {FLOW_KEYS} keys stored {len(distinct)} tasks "
        f"({len(unique_calls) - len(distinct)} returned the holder); {len(by_key)} keys ran; "
        f"{lost['unique']} holder(s) ended WorkerLost (worker or server killed)",
        bad)]

    # 2. limits: concurrency and rate
    limited = [intervals[i] for i, s in spans.items() if s["kind"] == "limited" and i in intervals]
    peak = _most_at_once(limited)
    bad = [f"{peak} flow_limited tasks running at once"] if peak > FLOW_CONCURRENCY else []
    n, period = FLOW_RATE
    # The server's start times (its records), where a client saw the record; a restart
    # without STATE_DIR starts a new window (documented): count each server's starts apart.
    starts = sorted(final.get(i, {}).get("started_at") or s["start"]
                    for i, s in spans.items() if s["kind"] == "rated")
    cuts = [] if durable else sorted(r["t"] for r in restarts)
    worst = 0
    for k, t in enumerate(starts):
        segment_end = min([c for c in cuts if c > t] or [float("inf")])
        worst = max(worst, sum(1 for u in starts[k:] if u < min(t + period, segment_end)))
    if worst > n:
        bad.append(f"{worst} flow_rated starts within {period:g} s (rate {n}/{period:g}s)")
    invariants.append(_invariant(
        "limits: never more than the limit running, nor more starts than the rate", not bad,
        f"flow_limited: {len(limited)} runs ({lost['limited']} ended WorkerLost), at most "
        f"{peak} at once (concurrency {FLOW_CONCURRENCY}); flow_rated: {len(starts)} starts, "
        f"at most {worst} in any {period:g} s (rate {n}/{period:g}s)", bad))

    # 3. dependencies
    bad = []
    chains = [(task_id, parent) for kind, task_id, parent in items if kind == "chain"]
    failed_parents = ran_children = 0
    for child, parent in chains:
        pf, cf = final.get(parent, {}), final.get(child, {})
        if child in spans:
            ran_children += 1
            pspan = spans.get(parent)
            if pspan is None or pspan["end"] is None or pf.get("status") == "FAILED":
                bad.append(f"{child} ran, but its parent {parent} did not succeed "
                           f"({pf.get('status')} {pf.get('err')})")
            elif spans[child]["start"] + SLACK < pspan["end"]:
                bad.append(f"{child} started at {spans[child]['start']:.3f}, before its parent "
                           f"{parent} ended at {pspan['end']:.3f}")
        if pf.get("status") == "FAILED":
            failed_parents += 1
            if cf.get("status") is not None and (cf.get("status") != "FAILED" or cf.get(
                    "err") != DEPENDENCY_FAILED or parent not in (cf.get("msg") or "")):
                bad.append(f"{child}: parent {parent} failed, but it ended {cf.get('status')} "
                           f"{cf.get('err')}")
    invariants.append(_invariant(
        "dependencies: no dependent before its parents, none after a failed one", not bad,
        f"{len(chains)} dependents: {ran_children} ran after their parent, {failed_parents} "
        f"parents failed (their dependents ended DependencyFailed without running)", bad))

    # 4. every flow task final (or lost with a server restart without STATE_DIR)
    bad = [f"{i} ({kinds.get(i)}) unfinished" for i in unfinished]
    gone = [i for i, f in final.items() if f.get("status") is None]
    if durable:
        bad += [f"{i} ({kinds.get(i)}) gone despite STATE_DIR" for i in gone]
    bad += [f"{i}: no end, and no server restart after it started" for i in open_ended]
    invariants.append(_invariant(
        "workflow tasks all finished", not bad,
        f"{len(final)} final, {len(gone)} lost with a server restart, {len(errors)} enqueue "
        f"call(s) refused during a restart", bad))
    return invariants
