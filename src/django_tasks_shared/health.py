"""Health of a task server: status from a `TaskStore.health()` snapshot, and the terminal report.

    snapshot (one `health` round trip; psutil figures are the supervisor's cached ones)
      -> evaluate() -> ("healthy" | "degraded", reasons)
      -> report()   -> the JSON document of `tasks_health --json`
      -> render()   -> the human report of `tasks_health`

    degraded when: fewer live worker processes than configured, a worker in crash back-off,
                   more than 90 % of MAX_QUEUE pending, the server is draining (stopping),
                   or the STATE_DIR flusher reports an error (a full disk).
    unreachable:   no answer (see `unreachable_report`); the command never starts a server.

Pure functions over plain data: no Django, no IPC, so they are unit-tested directly.
"""

import time
from datetime import datetime

HEALTHY, DEGRADED, UNREACHABLE = "healthy", "degraded", "unreachable"
EXIT_CODES = {HEALTHY: 0, DEGRADED: 1, UNREACHABLE: 2}
QUEUE_ALARM = 0.9  # fraction of MAX_QUEUE above which the server is degraded

WORKER_KEYS = ("id", "pid", "state", "rss_bytes", "cpu_percent", "tasks_done", "current_task",
               "current_tasks", "started_at", "ready_at", "uptime", "retiring", "retire_reason",
               "failure", "generation")


def _supervisor(snapshot):
    return (snapshot.get("server") or {}).get("supervisor") or {}


def expected_workers(snapshot):
    server = snapshot.get("server") or {}
    return _supervisor(snapshot).get("workers_expected") or server.get("workers_expected") or 0


def _next_try(sup):
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
                f"({failure.get('streak', '?')} failure(s) in a row, {_next_try(sup)})")
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
        "counters": {}, "workers": [], "state": None, "schedules": [],
    }


# ---- the terminal report ---------------------------------------------------------------------

def duration(seconds):
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def size(nbytes):
    if nbytes is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024


def clock(timestamp, now):
    if timestamp is None:
        return "-"
    moment = datetime.fromtimestamp(timestamp)
    fmt = "%H:%M:%S" if now - timestamp < 86400 else "%Y-%m-%d %H:%M"
    return f"{moment.strftime(fmt)} ({duration(max(0.0, now - timestamp))} ago)"


def _table(header, rows, right=()):
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(cell).rjust(w) if i in right else str(cell).ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


PROGRESS_WIDTH = 40  # characters of a running task's progress in the workers table


def progress_text(progress):
    """{"done": 40, "total": 100} -> "done=40 total=100", cut to PROGRESS_WIDTH."""
    if not progress:
        return ""
    text = " ".join(f"{key}={value}" for key, value in progress.items())
    return text if len(text) <= PROGRESS_WIDTH else text[:PROGRESS_WIDTH - 3] + "..."


def _task_cell(task):
    if not task:
        return "-"
    cell = f"{task['name']} {task['id'][:12]} {duration(task.get('running_for'))}"
    if (task.get("attempt") or 1) > 1:
        cell += f" (attempt {task['attempt']})"
    if task.get("progress"):
        cell += f" [{progress_text(task['progress'])}]"
    return cell


def _reload_lines(server, now):
    if "generation" not in server:
        return []
    text = f"reload    generation {server['generation']}"
    if server.get("reloading"):
        text += f", reloading to generation {server['generation'] + 1}"
    last = server.get("last_reload")
    if last:
        took = last["finished_at"] - last["requested_at"]
        text += (f"; last reload finished {clock(last['finished_at'], now)} in "
                 f"{duration(took)}: " + ("ok" if last["ok"] else f"FAILED: {last['error']}"))
    elif not server.get("reloading"):
        text += "; no reload since start"
    return [text]


def _state_lines(state, now):
    if not state:
        return ["state     in memory only (no STATE_DIR): a restart loses the queue"]
    restored = state.get("restored") or {}
    lines = [
        f"state     {state['dir']}  fsync {state['fsync']}  journal "
        f"{size(state.get('journal_bytes'))} (compacts past {size(state.get('journal_limit'))})"
        f"  last snapshot {clock(state.get('last_snapshot_at'), now)}",
        f"restored  {restored.get('pending', 0)} pending, {restored.get('results', 0)} results, "
        f"{restored.get('interrupted', 0)} interrupted (ended WorkerLost)"
        + (f"; {state['torn_tails']} torn journal tail(s) dropped" if state.get("torn_tails")
           else "")]
    if state.get("error"):
        lines.append(f"  ! {state['error']}")
    return lines


def render(doc, now=None):
    """The human report of a `report()` or `unreachable_report()` document."""
    now = time.time() if now is None else now
    server = doc.get("server") or {}
    status = doc["status"]
    title = f"django-tasks-shared {server.get('version', '')}".rstrip()
    if doc.get("backend"):
        title += f" - backend {doc['backend']!r}"
    lines = [f"{title}: {status.upper()}"]
    lines += [f"  ! {reason}" for reason in doc.get("reasons") or ()]
    if status == UNREACHABLE:
        return "\n".join(lines) + "\n"

    sup = server.get("supervisor") or {}
    threads = server.get("threads")
    kind = "embedded, " if server.get("embedded") else ""
    lines.append("")
    lines.append(
        f"server    pid {server.get('pid')}  {server.get('address')}  up "
        f"{duration(server.get('uptime'))}  version {server.get('version')}  python "
        f"{server.get('python')}  ({kind}{expected_workers(doc)} worker(s) x {threads} "
        f"thread(s))")
    limits = []
    if server.get("time_limit") is not None:
        limits.append(f"TIME_LIMIT {server['time_limit']:g} s")
    if server.get("max_worker_memory") is not None:
        limits.append(f"MAX_WORKER_MEMORY {server['max_worker_memory']} MiB")
    if server.get("max_task_memory") is not None:
        limits.append(f"MAX_TASK_MEMORY {server['max_task_memory']} MiB")
    for key, label in (("max_tasks_per_worker", "MAX_TASKS_PER_WORKER"),
                       ("max_queue", "MAX_QUEUE")):
        if (doc.get("limits") or {}).get(key) is not None:
            limits.append(f"{label} {doc['limits'][key]}")
    if server.get("connections") is not None:
        limits.append(f"connections {server['connections']} of MAX_CONNECTIONS "
                      f"{server.get('max_connections')}")
    if limits:
        lines.append(f"limits    {'  '.join(limits)}")
    queues = doc.get("queues") or {}
    queue_text = "  ".join(f"{name}: {q['ready']} ready, {q['deferred']} deferred"
                           for name, q in queues.items()) or "-"
    lines.append(f"queues    {queue_text}  (pending {doc.get('pending', 0)})")
    lines.append(f"running   {doc.get('running', 0)}")
    results = doc.get("results") or {}
    ttl = results.get("ttl")
    lines.append(
        f"results   {results.get('stored', 0)} stored (max {results.get('max')}"
        + (f", ttl {ttl:g} s" if ttl is not None else "") + f")  "
        f"{results.get('evicted', 0)} evicted  {results.get('expired', 0)} expired")
    c = doc.get("counters") or {}
    lines.append(
        f"counters  enqueued {c.get('enqueued', 0)}  succeeded {c.get('succeeded', 0)}  "
        f"failed {c.get('failed', 0)}  worker lost {c.get('worker_lost', 0)}  timed out "
        f"{c.get('timed_out', 0)}  cancelled {c.get('cancelled', 0)}  retried "
        f"{c.get('retried', 0)}  restarts {c.get('worker_restarts', 0)}"
        + (f"  over memory {c['memory_exceeded']}" if c.get("memory_exceeded") else "")
        + (f"  rejected (queue full) {c['rejected_full']}" if c.get("rejected_full") else ""))
    lines += _reload_lines(server, now)
    lines += _state_lines(doc.get("state"), now)
    failure = sup.get("last_failure")
    if failure:
        state = "resolved" if failure.get("resolved") else _next_try(sup)
        lines.append(
            f"start-up  last failure {clock(failure.get('at'), now)}: worker "
            f"{failure.get('worker')} (pid {failure.get('pid')}) {failure.get('exit')}: "
            f"{failure.get('reason')} [{failure.get('streak')} in a row, {state}]")

    workers = doc.get("workers") or []
    lines.append("")
    lines.append(f"workers   {len(workers)} of {expected_workers(doc)}")
    header = ("ID", "PID", "STATE", "RSS", "CPU %", "CURRENT TASK (name, id, running for)",
              "DONE", "STARTED")
    rows = []
    for worker in workers:
        tasks = worker.get("current_tasks") or (
            [worker["current_task"]] if worker.get("current_task") else [])
        state = worker.get("state") or "-"
        if worker.get("retiring"):
            state += " (retiring)"
        cpu = worker.get("cpu_percent")
        rows.append((worker.get("id"), worker.get("pid"), state, size(worker.get("rss_bytes")),
                     "-" if cpu is None else f"{cpu:.1f}", _task_cell(tasks[0] if tasks else None),
                     worker.get("tasks_done", 0), clock(worker.get("started_at"), now)))
        rows += [("", "", "", "", "", _task_cell(task), "", "") for task in tasks[1:]]
    if rows:
        lines += _table(header, rows, right={1, 3, 4, 6})
    else:
        lines.append("  (no worker process)")
    notes = [f"  {w['id']}: retiring, {w['retire_reason']}" for w in workers
             if w.get("retiring") and w.get("retire_reason")]
    lines += notes
    lines += _render_schedules(doc.get("schedules") or [], now)
    return "\n".join(lines) + "\n"


def when(timestamp, now):
    """A clock time with how far away it is, past or future."""
    if timestamp is None:
        return "-"
    if timestamp <= now:
        return clock(timestamp, now)
    moment = datetime.fromtimestamp(timestamp)
    fmt = "%H:%M:%S" if timestamp - now < 86400 else "%Y-%m-%d %H:%M"
    return f"{moment.strftime(fmt)} (in {duration(timestamp - now)})"


def _render_schedules(schedules, now):
    if not schedules:
        return []
    lines = ["", f"schedules {len(schedules)}"]
    header = ("NAME", "TASK", "WHEN", "NEXT RUN", "LAST RUN (due)", "LAST RESULT", "STATUS")
    rows = []
    for item in schedules:
        last = item.get("last_run") or {}
        if not last:
            status = "-"
        elif last.get("error"):
            status = "skipped: " + last["error"].split(";")[0]
        else:
            status = last.get("status") or "(result no longer stored)"
        rows.append((item["name"], item["task"], item["when"], when(item.get("next_run"), now),
                     when(last.get("due"), now), last.get("id") or "-", status))
    return lines + _table(header, rows)
