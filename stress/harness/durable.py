"""The durability side of a stress run with `--state-dir` (a server with OPTIONS["STATE_DIR"]).

With a state directory a server restart must lose nothing. The one allowed casualty: a task
that was RUNNING when the harness SIGKILLed the server ends FAILED with WorkerLost, whose text
names the dead server ("the task server (pid N) died while this task ran"). This module tells
such a task from everything else, and checks what each restarted server said it restored:

    task (as its client saw it) ──server_victim()──> pid of the SIGKILLed server it died with
    health["state"] of every server generation (monitor) ──┐
    restarts the harness injected (pid, signal, time) ─────┼──> durability invariant + figures
    victims + ledger lines ────────────────────────────────┘

Without --state-dir nothing here applies: tasks lost with a server are counted, not failures.
"""

import re

WORKER_LOST = "django_tasks_shared.exceptions.WorkerLost"
SERVER_DIED = re.compile(r"the task server \(pid (\d+)\) died while this task ran")
SLACK = 0.05  # seconds, one host clock read by different processes


def server_victim(info):
    """The pid of the server whose death ended this task (FAILED, WorkerLost), or None."""
    if info.get("status") != "FAILED" or info.get("err") != WORKER_LOST:
        return None
    match = SERVER_DIED.search(info.get("msg") or "")
    return int(match.group(1)) if match else None


def victim_problem(task_id, info, restarts):
    """Why this server-death WorkerLost is not explained by a SIGKILL we injected, or None."""
    pid = server_victim(info)
    kills = [r for r in restarts if r["pid"] == pid]
    if not kills:
        return f"{task_id} ({info['w']}) WorkerLost for server pid {pid}, not one we restarted"
    kill = kills[0]
    if kill.get("signal") != "kill":
        return (f"{task_id} ({info['w']}) WorkerLost for server pid {pid}, which was stopped "
                f"with SIGTERM: a graceful stop must let running tasks finish (drain)")
    started = info.get("started_at")
    if started is None or started > kill["t"] + SLACK:
        return (f"{task_id} ({info['w']}) WorkerLost for server pid {pid} but it started at "
                f"{started} after that server was SIGKILLed at {kill['t']:.3f}")
    return None


def check(config, tasks, runs, restarts, states, other_victims=None):
    """(ok, detail, failures, figures) of the durability invariant. `states` maps server pid
    to the `state` section of its health (None when that server had no STATE_DIR);
    `other_victims` counts, per dead server pid, the workflow tasks (flows.py) that ended
    WorkerLost with it: they are among what the next server restored as interrupted."""
    other_victims = other_victims or {}
    bad = []
    victims = {}
    for task_id, info in tasks.items():
        pid = server_victim(info)
        if pid is None:
            continue
        victims[task_id] = pid
        problem = victim_problem(task_id, info, restarts)
        if problem:
            bad.append(problem)
        # At most once: it ran (ledger line) in the dead server's worker, or not at all. That
        # worker may write its line after the SIGKILL, as an orphan (its parent is then init or
        # a subreaper); a line whose parent is another server of this run means it ran again.
        lines = runs.get(task_id, [])
        again = [x for x in lines if x["server_pid"] != pid and x["server_pid"] in states]
        if len(lines) > 1 or again:
            bad.append(f"{task_id} WorkerLost with server {pid} but the ledger has "
                       f"{[(x['pid'], x['server_pid']) for x in lines]} (pid, server pid)")
    restored = []
    for pid, state in states.items():
        if not state:
            bad.append(f"server {pid} answered without a STATE_DIR (health state is empty)")
            continue
        if state.get("dir") != config["state_dir"]:
            bad.append(f"server {pid} uses STATE_DIR {state.get('dir')}, not "
                       f"{config['state_dir']}")
        numbers = state.get("restored") or {}
        restored.append({"pid": pid, "pending": numbers.get("pending", 0),
                         "results": numbers.get("results", 0),
                         "interrupted": numbers.get("interrupted", 0),
                         "torn_tails": state.get("torn_tails", 0),
                         "compactions": state.get("compactions", 0),
                         "error": state.get("error")})
        if state.get("error"):
            bad.append(f"server {pid}: STATE_DIR error {state['error']}")
    # What the server that followed each restart says it ended as interrupted must match the
    # tasks the clients saw end that way, restart by restart.
    by_pid = {r["pid"]: r for r in restored}
    for r in restarts:
        after = by_pid.get(r.get("new_pid"))
        if after is None:
            continue
        seen = sum(1 for pid in victims.values() if pid == r["pid"]) + \
            other_victims.get(r["pid"], 0)
        if after["interrupted"] != seen:
            bad.append(f"server {after['pid']} (after SIG{r['signal'].upper()} of {r['pid']}) "
                       f"restored {after['interrupted']} interrupted task(s); the clients saw "
                       f"{seen} end WorkerLost for server {r['pid']}")
    listing = [{"id": task_id, "w": tasks[task_id]["w"], "server_pid": pid,
                "ran": len(runs.get(task_id, []))} for task_id, pid in victims.items()]
    figures = {"state_dir": config["state_dir"], "fsync": config["fsync"],
               "journal_limit": next((s.get("journal_limit") for s in states.values() if s),
                                     None),
               "interrupted_by_server_kill": len(victims), "interrupted": listing,
               "workflow_interrupted_by_server_kill": sum(other_victims.values()),
               "restored": restored}
    detail = (f"{len(victims)} task(s) were RUNNING at a server SIGKILL and ended WorkerLost "
              f"(+{sum(other_victims.values())} of the workflow workload) "
              f"(each explained by an injected SIGKILL, at most one ledger line, in the dead "
              f"server's worker); restored by each server: "
              + "; ".join(f"pid {r['pid']}: {r['pending']} pending, {r['results']} results, "
                          f"{r['interrupted']} interrupted" for r in restored))
    return not bad, detail, bad, figures


def render(durability, row, lines):
    """Report rows for the durability figures (row(name, value) adds one)."""
    d = durability
    row("state dir", f"{d['state_dir']} (FSYNC={d['fsync']}, JOURNAL_LIMIT="
        f"{d.get('journal_limit')} bytes)")
    for r in d["restored"]:
        row(f"restored by pid {r['pid']}",
            f"{r['pending']} pending, {r['results']} results, {r['interrupted']} interrupted"
            + (f", {r['torn_tails']} torn journal tail(s)" if r["torn_tails"] else "")
            + (f", {r['compactions']} compaction(s)" if r["compactions"] else ""))
    row("WorkerLost (server)", f"{d['interrupted_by_server_kill']} task(s) were RUNNING when "
        f"the server was SIGKILLed (not lost: FAILED WorkerLost, never run again)")
    for item in d["interrupted"][:20]:
        lines.append(f"      {item['id']} {item['w']:<5} server pid {item['server_pid']}, "
                     f"{item['ran']} ledger line(s)")
    if len(d["interrupted"]) > 20:
        lines.append(f"      (+{len(d['interrupted']) - 20} more in the JSON report)")
