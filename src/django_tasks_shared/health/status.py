"""Health of a task server: its status from a `TaskStore.health()` snapshot.

    snapshot (one `health` round trip; psutil figures are the supervisor's cached ones)
      -> evaluate() -> ("healthy" | "degraded", reasons)
      -> report()   -> the JSON document of `tasks_health --json` (render.py: the human one)

    degraded when: fewer live worker processes than configured, a worker in crash back-off,
                   more than 90 % of MAX_QUEUE pending, the server is draining (stopping),
                   or the STATE_DIR cannot be written (a full or failing disk: changes are
                   refused meanwhile) or its files are being rewritten from memory.
    unreachable:   no answer (see `unreachable_report`); the command never starts a server.

Pure functions over plain data: no Django, no IPC, so they are unit-tested directly.
"""

import time

HEALTHY, DEGRADED, UNREACHABLE = "healthy", "degraded", "unreachable"
EXIT_CODES = {HEALTHY: 0, DEGRADED: 1, UNREACHABLE: 2}
QUEUE_ALARM = 0.9  # fraction of MAX_QUEUE above which the server is degraded

WORKER_KEYS = ("id", "pid", "state", "rss_bytes", "cpu_percent", "tasks_done", "current_task",
               "current_tasks", "started_at", "ready_at", "uptime", "retiring", "retire_reason",
               "failure", "generation", "pool", "reserved")


def _supervisor(snapshot):
    return (snapshot.get("server") or {}).get("supervisor") or {}


def expected_workers(snapshot):
    server = snapshot.get("server") or {}
    return _supervisor(snapshot).get("workers_expected") or server.get("workers_expected") or 0


def next_try(sup):
    wait = sup.get("next_spawn_in")
    return f"next try in {wait:g} s" if wait else "retrying now"


def evaluate(snapshot):
    """(status, reasons): HEALTHY with no reasons, or DEGRADED with one line per problem."""
    reasons = []
    server = snapshot.get("server") or {}
    sup = _supervisor(snapshot)
    if server.get("draining"):
        reasons.append("the server is draining (shutting down): no task is handed out")
    expected = expected_workers(snapshot)
    live = len(snapshot.get("workers") or ())
    if live < expected:
        reasons.append(f"{live} of {expected} worker process(es) alive")
    if sup.get("crash_loop"):
        failure = sup.get("last_failure") or {}
        text = (f"workers fail at start-up and are restarted with back-off "
                f"({failure.get('streak', '?')} failure(s) in a row, {next_try(sup)})")
        if failure.get("reason"):
            text += f": {failure['reason']}"
        reasons.append(text)
    if sup.get("memory_warning"):
        reasons.append(sup["memory_warning"])
    state_error = (snapshot.get("state") or {}).get("error")
    if state_error:
        reasons.append(f"STATE_DIR: {state_error}")
    max_queue = (snapshot.get("limits") or {}).get("max_queue")
    pending = snapshot.get("pending") or 0
    if max_queue and pending > QUEUE_ALARM * max_queue:
        reasons.append(f"{pending} pending task(s), above {QUEUE_ALARM:.0%} of "
                       f"MAX_QUEUE={max_queue}")
    return (DEGRADED if reasons else HEALTHY), reasons


def report(snapshot, alias=None):
    """The `--json` document: status, reasons, server, queues, results, counters, workers..."""
    status, reasons = evaluate(snapshot)
    server = dict(snapshot.get("server") or {})
    queues = {name: {"ready": 0, "deferred": 0} for name in server.get("queues") or ()}
    queues.update(snapshot.get("queues") or {})
    return {
        "status": status,
        "reasons": reasons,
        "backend": alias if alias is not None else server.get("alias"),
        "checked_at": time.time(),
        "server": server,
        "queues": dict(sorted(queues.items())),
        "pending": snapshot.get("pending", 0),
        "running": snapshot.get("running", 0),
        "results": snapshot.get("results") or {},
        "limits": snapshot.get("limits") or {},
        "counters": snapshot.get("counters") or {},
        "workers": [{key: worker.get(key) for key in WORKER_KEYS}
                    for worker in snapshot.get("workers") or ()],
        "schedules": snapshot.get("schedules") or [],
        "state": snapshot.get("state"),
        "pools": _supervisor(snapshot).get("pools") or [],
        "workflows": snapshot.get("workflows") or {},
        "notices": snapshot.get("notices"),  # None from a 0.1.0 server
        "prefetch": snapshot.get("prefetch"),  # None from a server before 0.3
    }


def unreachable_report(address, reason, alias=None):
    """The `--json` document when nobody answers: same top-level keys, empty sections."""
    return {
        "status": UNREACHABLE,
        "reasons": [f"task server at {address} is unreachable: {reason}"],
        "backend": alias,
        "checked_at": time.time(),
        "server": {"address": address, "error": reason},
        "queues": {}, "pending": None, "running": None, "results": {}, "limits": {},
        "counters": {}, "workers": [], "state": None, "schedules": [], "notices": None,
        "pools": [], "workflows": {}, "prefetch": None,
    }
