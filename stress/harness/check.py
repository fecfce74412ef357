"""The invariants of a stress run, the report table and its JSON form.

Sources, deliberately independent of each other:
- the ledger: one line per task execution, appended by the task itself in its worker process;
- what each client saw: the final record of each of its tasks, the status sequence of its own
  polls, and its lookups of other clients' ids (with the time before and after each call);
- the harness: health samples (stored results, workers, server RSS), the workers it SIGKILLed
  (id and pid) and the servers it SIGKILLed.

    check() ──observe()──> Observed (the three sources, gathered once)
      ──> one function per invariant, each -> {name, ok, detail, failures}, in this order:
          1 terminal_once    2 executed_once    3 outcomes_match    4 lookups_agree
          4b durable.check (with --state-dir)   4c stall.check (with the stall fault)
          5 results_bounded  6 workers_back
          7 rss_bounded      8 faults_survived  9 run_after_honoured
          10 time_limit_enforced (when the server has a TIME_LIMIT)
          11-14 the workflow workload (flows.py: unique keys, limits, dependencies)
      ──> the report dict: "passed", the invariants, the figures (report.py prints it)
"""

import glob
import os
import statistics
from dataclasses import dataclass

from . import disk as harness_disk
from . import durable as harness_durable
from . import flows as harness_flows
from . import stall as harness_stall

WORKER_LOST = "django_tasks_shared.exceptions.WorkerLost"
TIME_LIMIT = "django_tasks_shared.exceptions.TimeLimitExceeded"
STRESS_FAILURE = "stress.harness.tasks.StressFailure"
TERMINAL = ("SUCCESSFUL", "FAILED")
FLAKY_MAX_ATTEMPTS = 3  # @retry(max_attempts=3) of stress.harness.tasks.flaky
RANK = {"READY": 0, "RUNNING": 1, "SUCCESSFUL": 2, "FAILED": 2}
SLACK = 0.05  # seconds, for comparisons of one host's clock read in different processes
MiB = 2 ** 20


def workers_restored(health):
    server = health["server"]
    sup = server.get("supervisor") or {}
    expected = server["workers_expected"]
    ready = [w for w in health["workers"]
             if w["state"] in ("idle", "busy") and not w.get("retiring")]
    ok = (len(ready) == expected and len(health["workers"]) == expected
          and sup.get("workers_alive") == expected and not sup.get("crash_loop"))
    return ok, (f"{len(ready)} ready of {expected} configured (registered "
                f"{len(health['workers'])}, supervisor alive {sup.get('workers_alive')}, "
                f"crash loop {bool(sup.get('crash_loop'))})")


def workers_to_recycle(outputs):
    """Ids of the workers that ran a hog to its end: the supervisor retires each of them at its
    next RSS sample (every 0.5 s), once the worker's current tasks are done. The final health
    must be read after that, or a hog among the last tasks is called "not recycled" when only
    the sample had not come yet (issue 15: 1 run in 4 on a loaded machine)."""
    ids = set()
    for out in outputs:
        for info in (out or {}).get("tasks", {}).values():
            if info.get("w") == "hog" and info.get("status") == "SUCCESSFUL" and \
                    info.get("worker_ids"):
                ids.add(info["worker_ids"][-1])
    return ids


def _pct(values, q):
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def read_ledger(directory):
    runs = {}
    for path in glob.glob(os.path.join(directory, "*.log")):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 4:
                    runs.setdefault(parts[0], []).append(
                        {"pid": int(parts[1]), "server_pid": int(parts[2]), "w": parts[3]})
    return runs


def _examples(items, n=5):
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return "; ".join(str(i) for i in items[:n]) + more


@dataclass
class Observed:
    """What the invariants draw on, gathered once by observe()."""

    config: dict
    tasks: dict           # id -> what its client saw (or another client, when its owner missed it)
    cross: list           # [observer, id, status, error class, t before, t after] per lookup
    down_seen: list       # each time a client saw ServerUnavailable
    enqueue_errors: list
    client_codes: list
    runs: dict            # id -> its ledger lines, one per execution
    killed: dict          # worker id -> the harness's SIGKILL of it
    restarts: list        # the server restarts the harness injected
    durable: bool         # the server has a STATE_DIR: a restart must lose nothing
    victims: dict         # id -> pid of the SIGKILLed server it was RUNNING on (WorkerLost)
    final_worker_ids: set
    hows: dict            # how a task ended ("store", "lost-with-server", ...) -> ids
    monitor: object
    faults: object
    final_health: dict | None
    stalled_enqueues: dict  # id -> "queued" / "not stored": enqueues that raised ServerStalled

    @property
    def terminal(self):
        return len(self.hows.get("store", [])) + len(self.hows.get("seen-by-other-client", []))

    @property
    def lost_server(self):
        return self.hows.get("lost-with-server", [])


def observe(config, outputs, client_codes, ledger_dir, monitor, faults, final_health):
    tasks, cross, down_seen, enqueue_errors, seen_final = {}, [], [], [], {}
    stalled_enqueues = {}
    for out in outputs:
        if out is None:
            continue
        tasks.update(out["tasks"])
        stalled_enqueues.update(out.get("stalled_enqueues", {}))
        for task_id, seen in out.get("seen_final", {}).items():
            seen_final.setdefault(task_id, seen)
        cross.extend([out["idx"]] + obs for obs in out["cross"])
        down_seen.extend(out["down_seen"])
        enqueue_errors.extend(out["enqueue_errors"])
    victims = {i: harness_durable.server_victim(info) for i, info in tasks.items()}
    victims = {i: pid for i, pid in victims.items() if pid is not None}

    # A task whose owner missed its end (server gone) but another client saw it finished:
    # judged on what that client saw (status, error, return value, worker ids).
    for task_id, info in tasks.items():
        if info["how"] != "store" and task_id in seen_final:
            info["how"] = "seen-by-other-client"
            info.update(seen_final[task_id])
    hows = {}
    for task_id, info in tasks.items():
        hows.setdefault(info["how"], []).append(task_id)
    return Observed(
        config=config, tasks=tasks, cross=cross, down_seen=down_seen,
        enqueue_errors=enqueue_errors, client_codes=client_codes, runs=read_ledger(ledger_dir),
        killed={k["worker_id"]: k for k in faults.kills}, restarts=faults.restarts,
        durable=config.get("state_dir") is not None, victims=victims,
        final_worker_ids={w["id"] for w in (final_health or {}).get("workers", [])},
        hows=hows, monitor=monitor, faults=faults, final_health=final_health,
        stalled_enqueues=stalled_enqueues)


def _invariant(name, ok, detail, failures=()):
    return {"name": name, "ok": bool(ok), "detail": detail, "failures": list(failures)[:20]}


def _finished(info):
    """Its end is known: from the store, or from another client that saw it finished."""
    return info["how"] in ("store", "seen-by-other-client")


def terminal_once(o):
    """1. Every task reached a terminal state (or is honestly counted as lost with the server)."""
    tasks, lost_server = o.tasks, o.lost_server
    bad = []
    for how in ("missing", "unfinished"):
        bad += [f"{i} {how} ({tasks[i]['w']})" for i in o.hows.get(how, [])]
    never = o.config["tasks"] - len(tasks)
    if never:
        bad.append(f"{never} planned task(s) never enqueued ({_examples(o.enqueue_errors, 2)})")
    if any(code != 0 for code in o.client_codes):
        bad.append(f"client exit codes {o.client_codes}")
    if o.durable:  # with a STATE_DIR a restart loses nothing
        bad += [f"{i} ({tasks[i]['w']}) lost with the server despite STATE_DIR"
                for i in lost_server]
    for task_id in lost_server:
        info = tasks[task_id]
        if not any(r["t"] + SLACK >= info["enqueued_at"] for r in o.restarts):
            bad.append(f"{task_id} called lost with the server but no server was killed after "
                       f"it was enqueued")
    return _invariant(
        "every task reached a terminal state exactly once; none lost", not bad,
        f"{len(tasks)} enqueued: {o.terminal} terminal ({len(o.victims)} of them WorkerLost: "
        f"running at a server SIGKILL), {len(lost_server)} lost with the server "
        f"(restart{'; must be 0 with STATE_DIR' if o.durable else ''}), "
        f"{len(o.hows.get('missing', []))} missing, "
        f"{len(o.hows.get('unfinished', []))} unfinished", bad)


def _attempts(o, task_id):
    """Ledger lines a task may have: a retried task writes one per attempt."""
    info = o.tasks.get(task_id) or {}
    if info.get("w") != "flaky":
        return 1
    # lost with the server: how many attempts it had is unknown; at most its max_attempts
    return len(info.get("worker_ids") or ()) or FLAKY_MAX_ATTEMPTS


def _ledger_lines_ok(o, task_id, info, n):
    """Whether n ledger lines fit what the task's outcome says about its executions."""
    status, err = info.get("status"), info.get("err")
    wids = info.get("worker_ids") or []
    was_killed = bool(wids) and wids[-1] in o.killed
    if info["w"] == "flaky":  # one ledger line per attempt (retried under the same id)
        return n == len(wids) if status == "SUCCESSFUL" else n <= _attempts(o, task_id)
    if not _finished(info):
        return n <= 1
    if status == "SUCCESSFUL":
        return n == 1 and (info.get("ret") or {}).get("pid") == o.runs[task_id][0]["pid"]
    if task_id in o.victims:  # checked in the durability invariant
        return n <= 1
    if err == WORKER_LOST and was_killed:
        return n == 0 or o.runs[task_id][0]["pid"] == o.killed[wids[-1]]["pid"]
    if err == WORKER_LOST:
        return n == 1 if info["w"] == "crash" else n <= 1
    return n == 1


def executed_once(o):
    """2. Exactly-once execution, from the ledger the tasks wrote."""
    runs = o.runs
    dups = {i: r for i, r in runs.items() if len(r) > max(1, _attempts(o, i))}
    bad = [f"{i} ran {len(r)} times: pids {[x['pid'] for x in r]}" for i, r in dups.items()]
    strangers = set(runs) - set(o.tasks)
    bad += [f"{i} in the ledger but enqueued by nobody (an enqueue that raised "
            f"ServerUnavailable was stored after all, and the client enqueued it again)"
            for i in strangers]
    for task_id, info in o.tasks.items():
        n = len(runs.get(task_id, ()))
        if not _ledger_lines_ok(o, task_id, info, n):
            bad.append(f"{task_id} ({info['w']}, {info.get('status')} {info.get('err')}) has "
                       f"{n} ledger line(s)")
    return _invariant(
        "no duplicated execution (ledger written by the tasks)", not bad,
        f"{sum(len(r) for r in runs.values())} executions of {len(runs)} distinct ids in the "
        f"ledger (a retried attempt is an execution); {len(dups)} duplicated, "
        f"{len(strangers)} unknown", bad)


EXPECTED_LABEL = {"noop": "SUCCESSFUL", "cpu": "SUCCESSFUL", "sleep": "SUCCESSFUL",
                  "hog": "SUCCESSFUL", "flaky": "SUCCESSFUL", "fail": "StressFailure",
                  "crash": "WorkerLost", "hang": "TimeLimitExceeded"}


def _outcome_ok(o, info, was_killed, lost_by_kill):
    """(ok, message) of one finished task's outcome against what its workload must end as."""
    w, status, err, msg = info["w"], info.get("status"), info.get("err"), info.get("msg")
    wids = info.get("worker_ids") or []
    if w in ("noop", "cpu", "sleep"):
        ok = (status == "SUCCESSFUL" and info.get("expect") is not None and
              (info.get("ret") or {}).get("value") == info["expect"]["value"]) or lost_by_kill
    elif w == "fail":
        ok = (status == "FAILED" and err == STRESS_FAILURE) or lost_by_kill
    elif w == "flaky":  # attempt 1 StressFailure, retried, attempt 2 succeeds
        ok = (status == "SUCCESSFUL" and len(wids) == 2 and
              info.get("first_err") == STRESS_FAILURE and
              (info.get("ret") or {}).get("value") == 2) or lost_by_kill
    elif w == "crash":
        ok = status == "FAILED" and err == WORKER_LOST and (
            "exited with code 17" in (msg or "") or was_killed)
    elif w == "hang":
        ok = (status == "FAILED" and err == TIME_LIMIT) or lost_by_kill
    elif w == "hog":
        ok = status == "SUCCESSFUL" or lost_by_kill
        if status == "SUCCESSFUL" and wids and wids[-1] in o.final_worker_ids:
            ok = False
            msg = f"its worker {wids[-1]} was not recycled"
    else:
        ok = False
    return ok, msg


def outcomes_match(o):
    """3. Each outcome matches its workload. Also returns the outcomes per workload (the
    report's table) and the tasks lost to the harness's worker SIGKILLs, per worker id."""
    bad, table, lost_to_kills = [], {}, {}
    retire_seen = 0
    for task_id, info in o.tasks.items():
        w, status, err, msg = info["w"], info.get("status"), info.get("err"), info.get("msg")
        if not _finished(info):
            table.setdefault(w, {}).setdefault(info["how"], 0)
            table[w][info["how"]] += 1
            continue
        label = status if status == "SUCCESSFUL" else (err or "?").rsplit(".", 1)[-1]
        if o.durable and task_id in o.victims:
            label = "WorkerLost (server SIGKILL)"
        table.setdefault(w, {}).setdefault(label, 0)
        table[w][label] += 1
        wids = info.get("worker_ids") or []
        was_killed = bool(wids) and wids[-1] in o.killed
        lost_by_kill = was_killed and err == WORKER_LOST and "SIGKILL" in (msg or "")
        if o.durable and task_id in o.victims:  # running at a server SIGKILL: any workload
            continue
        if lost_by_kill:
            lost_to_kills.setdefault(wids[-1], []).append(task_id)
        ok, msg = _outcome_ok(o, info, was_killed, lost_by_kill)
        if w == "hog" and status == "SUCCESSFUL" and wids and wids[-1] in o.monitor.retiring_seen:
            retire_seen += 1
        if not ok:
            bad.append(f"{task_id} {w}: {status} {err} {msg!r}")
    for w, counts in table.items():
        ended = sum(v for k, v in counts.items() if k not in ("lost-with-server",))
        if ended and not counts.get(EXPECTED_LABEL[w]):
            bad.append(f"no {w} task ended {EXPECTED_LABEL[w]} (all {ended} explained by kills?)")
    too_many = {wid: ids for wid, ids in lost_to_kills.items()
                if len(ids) > o.config["threads"]}
    bad += [f"killed worker {wid} lost {len(ids)} tasks" for wid, ids in too_many.items()]
    n_lost_kill = sum(len(ids) for ids in lost_to_kills.values())
    invariant = _invariant(
        "each outcome matches its workload", not bad,
        f"fail->StressFailure, flaky->SUCCESSFUL on attempt 2, crash->WorkerLost, "
        f"hang->TimeLimitExceeded, hog->SUCCESSFUL "
        f"and worker recycled ({retire_seen} retirements also seen in health); "
        f"{n_lost_kill} task(s) WorkerLost because the harness SIGKILLed their worker", bad)
    return invariant, table, lost_to_kills


def _cross_problems(o):
    """Lookups of other clients' ids against the final state; (failures, figures)."""
    bad, per_observer = [], {}
    agreed = terminal_obs = none_obs = 0
    # When some client first had a task's end in hand: from then on no lookup may see it
    # unfinished (no stale read). The worker's finished_at is no such moment: it is taken in the
    # worker before its report travels to the server, which a loaded machine delays by more than
    # any fixed slack.
    seen_terminal = {}
    for _observer, task_id, status, _err, _t0, t1 in o.cross:
        if status in TERMINAL:
            seen_terminal[task_id] = min(t1, seen_terminal.get(task_id, t1))
    for observer, task_id, status, err, t0, t1 in o.cross:
        info = o.tasks.get(task_id)
        if info is None:
            bad.append(f"client {observer} looked up {task_id}, enqueued by nobody")
            continue
        key = (observer, task_id)
        prev = per_observer.get(key)
        if status is None:
            none_obs += 1
            fin = info.get("finished_at")
            if _finished(info):
                if fin is not None and t1 + SLACK < fin:
                    bad.append(f"{task_id}: not found at {t1:.3f} before it finished at {fin:.3f}")
            elif info["how"] == "lost-with-server":
                if not any(r["t"] <= t1 + SLACK for r in o.restarts):
                    bad.append(f"{task_id}: not found before any server restart")
            per_observer[key] = (prev[0] if prev else -1, True)
            continue
        rank = RANK[status]
        if prev is not None:
            if prev[1]:
                bad.append(f"{task_id}: client {observer} found it again ({status}) after "
                           f"'does not exist'")
            elif rank < prev[0] and not (info["w"] == "flaky" and status not in TERMINAL):
                # (a retried task goes back from RUNNING to READY for its next attempt)
                bad.append(f"{task_id}: client {observer} saw it go backwards to {status}")
        per_observer[key] = (max(rank, prev[0] if prev else -1), False)
        if status in TERMINAL:
            terminal_obs += 1
            if (status, err) == (info.get("status"), info.get("err")):
                agreed += 1
            else:
                bad.append(f"{task_id}: client {observer} saw {status} {err}, final is "
                           f"{info.get('status')} {info.get('err')}")
        else:
            seen = seen_terminal.get(task_id)
            if seen is not None and t0 > seen + SLACK:
                bad.append(f"{task_id}: client {observer} saw {status} at {t0:.3f}, after a "
                           f"client had seen it finished at {seen:.3f}")
    return bad, (agreed, terminal_obs, none_obs)


def _own_sequence_problems(o):
    """Each client's own polls of a task: statuses only move forward, one final at the end."""
    bad = []
    for task_id, info in o.tasks.items():
        seen = info["seen"]
        if info["w"] == "flaky":  # READY <-> RUNNING per attempt; a final status only last
            if any(s in TERMINAL for s in seen[:-1]):
                bad.append(f"{task_id}: its own client saw {seen}")
            continue
        ranks = [RANK[s] for s in seen]
        if ranks != sorted(ranks) or (len(seen) > 1 and ranks[-1] == ranks[-2]):
            bad.append(f"{task_id}: its own client saw {info['seen']}")
    return bad


def lookups_agree(o):
    """4. Cross-client lookups agree with the final state, and never go backwards."""
    bad, (agreed, terminal_obs, none_obs) = _cross_problems(o)
    bad += _own_sequence_problems(o)
    return _invariant(
        "cross-client lookups agreed with the final state", not bad,
        f"{len(o.cross)} lookups of other clients' ids: {terminal_obs} terminal ({agreed} "
        f"agreed), {none_obs} not found (evicted or lost with the server)", bad)


def results_bounded(o):
    """5. Stored results never exceeded MAX_RESULTS. Also returns the report's "results"."""
    samples = o.monitor.samples
    # results held past MAX_RESULTS for a pending dependent (docs/workflows.md) do not count
    over = [s for s in samples if s["stored"] - s.get("held", 0) > s["max"]]
    max_stored = max((s["stored"] for s in samples), default=0)
    last_evicted = {}
    for s in samples:
        last_evicted[s["server_pid"]] = s["evicted"]
    # Per server, summed; with a STATE_DIR the counters carry over, so the last one has it all.
    evicted = (samples[-1]["evicted"] if o.durable and samples else sum(last_evicted.values()))
    invariant = _invariant(
        "stored results never exceeded MAX_RESULTS", samples and not over,
        f"max {max_stored} stored of MAX_RESULTS={o.config['max_results']} over {len(samples)} "
        f"health samples ({evicted} results evicted, all servers)",
        [f"{s['stored']} stored at {s['t']:.3f}" for s in over])
    return invariant, {"max_stored": max_stored, "max_results": o.config["max_results"],
                       "evicted": evicted, "health_samples": len(samples)}


def workers_back(o):
    """6. Workers back to the configured count."""
    if o.final_health is None:
        return _invariant("workers back to the configured count", False, "no final health")
    ok, detail = workers_restored(o.final_health)
    return _invariant("workers back to the configured count", ok, detail)


def rss_bounded(o):
    """7. Server RSS bounded (per server generation; last third vs first third). Also returns
    the report's "server_rss"."""
    rss_detail, bad = [], []
    by_gen = {}
    for s in o.monitor.samples:
        if s["rss"] is not None:
            by_gen.setdefault(s["server_pid"], []).append(s["rss"])
    rss_summary = {}
    for pid, values in by_gen.items():
        if len(values) < 9:
            continue
        third = len(values) // 3
        first = statistics.mean(values[:third])
        last = statistics.mean(values[-third:])
        peak = max(values)
        rss_summary[str(pid)] = {"first_third_mib": round(first / MiB, 1),
                                 "last_third_mib": round(last / MiB, 1),
                                 "peak_mib": round(peak / MiB, 1), "samples": len(values)}
        rss_detail.append(f"pid {pid}: {first / MiB:.1f} -> {last / MiB:.1f} MiB "
                          f"(peak {peak / MiB:.1f}, {len(values)} samples)")
        if last > 2 * first + 64 * MiB:
            bad.append(f"server {pid} grew from {first / MiB:.1f} to {last / MiB:.1f} MiB")
    invariant = _invariant(
        "server RSS did not grow without bound", not bad,
        ("; ".join(rss_detail) or "too few samples for a trend") +
        " (bound: last third <= 2 x first third + 64 MiB)", bad)
    return invariant, rss_summary


def faults_survived(o, n_lost_kill):
    """8. The faults asked for were injected, and survived. Also returns the recovery times."""
    config, faults, restarts = o.config, o.faults, o.restarts
    bad = []
    if "kill" in config["faults"] and not faults.kills:
        bad.append("no worker was killed")
    if "restart-server" in config["faults"]:
        if len(restarts) < config["restarts"]:
            bad.append(f"only {len(restarts)} of {config['restarts']} server restarts happened")
        for r in restarts:
            if r["recovered_at"] is None:
                bad.append(f"server {r['pid']} killed at {r['t']:.3f}: no new server answered")
        if restarts and not o.down_seen:
            bad.append("no client ever saw ServerUnavailable during a restart")
    recovery = [r.get("recovery_s") for r in restarts if r.get("recovery_s") is not None]
    signals = ", ".join(f"SIG{r.get('signal', 'kill').upper()}" for r in restarts)
    invariant = _invariant(
        "faults injected and survived", not bad,
        f"{len(faults.kills)} worker SIGKILLs ({faults.kill_misses} attempts found no worker "
        f"mid-way through a sleep/cpu task), {n_lost_kill} task(s) lost to them; "
        f"{len(restarts)} server restart(s) "
        f"({signals or '-'}), "
        f"{sum(r['recovered_at'] is not None for r in restarts)} recovered by AUTOSTART "
        f"(recovery {', '.join(f'{x:.2f} s' for x in recovery) or '-'}); clients saw "
        f"ServerUnavailable {len(o.down_seen)} time(s)", bad)
    return invariant, recovery


def run_after_honoured(o):
    """9. No deferred task started before its run_after."""
    bad, deferred = [], 0
    for task_id, info in o.tasks.items():
        if info.get("run_after") and info.get("started_at") is not None:
            deferred += 1
            if info["started_at"] + 0.001 < info["run_after"]:
                bad.append(f"{task_id} started {info['run_after'] - info['started_at']:.3f} s "
                           "before its run_after")
    return _invariant("run_after honoured", not bad, f"{deferred} deferred tasks started", bad)


def time_limit_enforced(o):
    """10. TIME_LIMIT enforced: nothing is seen RUNNING long past it (tick + kill grace +
    slack). Only for a server with a TIME_LIMIT."""
    bound = o.config["time_limit"] + 2.5
    longest = max((i.get("ran_max", 0.0) for i in o.tasks.values()), default=0.0)
    stalls = o.faults.stalls.stalls  # a stopped server enforces nothing: their time is added
    disk = getattr(o.faults, "disk", None)  # a full disk pauses TIME_LIMIT (disk.py)
    fills = disk.fills if disk is not None else []
    bad = [f"{task_id} ({i['w']}) still RUNNING {i['ran_max']:.1f} s after it started"
           for task_id, i in o.tasks.items()
           if i.get("ran_max", 0.0) > bound + harness_stall.time_allowance(stalls, i)
           + harness_disk.time_allowance(fills, i)]
    pauses = " and ".join(w for w, on in (("stalls", stalls), ("disk-full pauses", fills)) if on)
    return _invariant(
        "TIME_LIMIT enforced", not bad,
        f"longest RUNNING seen {longest:.2f} s (bound TIME_LIMIT + 2.5 s = {bound:g} s"
        f"{', plus the ' + pauses + ' a task ran through' if pauses else ''})", bad)


def _latencies(tasks):
    """Enqueue -> finished in ms of the successful tasks the store reported, not deferred: all
    of them, and the no-ops alone."""
    lat = [(i["finished_at"] - i["enqueued_at"]) * 1000 for i in tasks.values()
           if i.get("status") == "SUCCESSFUL" and not i.get("run_after")
           and i.get("finished_at") is not None and i["how"] == "store"]
    lat_noop = [(i["finished_at"] - i["enqueued_at"]) * 1000 for i in tasks.values()
                if i.get("status") == "SUCCESSFUL" and i["w"] == "noop" and not i.get("run_after")
                and i.get("finished_at") is not None and i["how"] == "store"]
    return {name: {f"p{q}": (round(_pct(values, q), 2) if values else None)
                   for q in (50, 95, 99)} | {"n": len(values)}
            for name, values in (("successful", lat), ("noop", lat_noop))}


def _task_counts(o, table):
    finished = [i for i in o.tasks.values() if _finished(i)]
    return {"planned": o.config["tasks"], "enqueued": len(o.tasks), "terminal": o.terminal,
            "lost_with_server": len(o.lost_server),
            "worker_lost_server_kill": len(o.victims),
            "missing": len(o.hows.get("missing", [])),
            "unfinished": len(o.hows.get("unfinished", [])),
            "successful": sum(i.get("status") == "SUCCESSFUL" for i in finished),
            "failed": sum(i.get("status") == "FAILED" for i in finished),
            # attempts beyond the first (only flaky is retried): from the results, and
            # the last server's own counter
            "retried": sum(max(len(i.get("worker_ids") or ()) - 1, 0) for i in finished),
            "retried_server_counter": ((o.final_health or {}).get("counters") or {})
            .get("retried"),
            "outcomes_by_workload": table}


def _fault_figures(o, n_lost_kill, recovery):
    faults, restarts = o.faults, o.restarts
    return {"worker_kills": len(faults.kills), "kills_skipped": faults.kill_misses,
            "tasks_lost_to_kills": n_lost_kill,
            "server_restarts": len(restarts),
            "server_restarts_recovered": sum(r["recovered_at"] is not None for r in restarts),
            "recovery_seconds": recovery,
            "restart_signals": [r.get("signal") for r in restarts],
            "restarts": [dict(r) for r in restarts],
            "client_saw_server_unavailable": len(o.down_seen),
            "enqueue_retries": len(o.enqueue_errors),
            "server_generations": [g[0] for g in o.monitor.generations]}


def check(*, config, outputs, client_codes, ledger_dir, monitor, faults, final_health,
          run_seconds, wall_start):
    o = observe(config, outputs, client_codes, ledger_dir, monitor, faults, final_health)
    invariants = [terminal_once(o), executed_once(o)]
    outcomes, table, lost_to_kills = outcomes_match(o)
    n_lost_kill = sum(len(ids) for ids in lost_to_kills.values())
    invariants += [outcomes, lookups_agree(o)]
    durability = None
    if o.durable:  # 4b. what each restarted server restored, who died with a SIGKILLed server
        ok, detail, bad, durability = harness_durable.check(
            config, o.tasks, o.runs, o.restarts, monitor.states,
            harness_flows.server_victims(outputs))
        invariants.append(_invariant("nothing lost across server restarts (STATE_DIR)", ok,
                                     detail, bad))
    stall_figures = None
    if "stall" in config["faults"]:  # 4c. workers lived through the stalls (stall.py)
        ok, detail, bad, stall_figures = harness_stall.check(o)
        invariants.append(_invariant("workers lived through server stalls", ok, detail, bad))
    stored, results = results_bounded(o)
    rss, rss_summary = rss_bounded(o)
    survived, recovery = faults_survived(o, n_lost_kill)
    invariants += [stored, workers_back(o), rss, survived, run_after_honoured(o)]
    disk = None
    if getattr(faults, "disk", None) is not None:  # --faults enospc (disk.py)
        ok, detail, bad, disk = harness_disk.check(faults.disk.report(), o.enqueue_errors,
                                                   final_health)
        invariants.append(_invariant("a full disk refused changes and the server resumed by "
                                     "itself (enospc)", ok, detail, bad))
    if config["time_limit"]:
        invariants.append(time_limit_enforced(o))
    # 11-14. the workflow workload (flows.py): unique keys, limits, dependencies
    invariants += harness_flows.check(outputs, os.path.join(os.path.dirname(ledger_dir),
                                                            "flows"), o.restarts, o.durable)
    first = min((i["t_enq"] for i in o.tasks.values()), default=0)
    last = max((i.get("t_final") or 0 for i in o.tasks.values()), default=0)
    span = last - first
    return {
        "config": config,
        "passed": all(i["ok"] for i in invariants),
        "tasks": _task_counts(o, table),
        "run_seconds": round(run_seconds, 3),
        "load_seconds": round(span, 3),
        "throughput_per_s": round(len(o.tasks) / span, 1) if span > 0 else None,
        "latency_ms": _latencies(o.tasks),
        "faults": _fault_figures(o, n_lost_kill, recovery) | (
            {"stall": stall_figures} if stall_figures else {}),
        "lookups": {"cross_client": len(o.cross)},
        "results": results,
        "server_rss": rss_summary,
        "durability": durability,
        "disk": disk,
        "invariants": invariants,
    }
