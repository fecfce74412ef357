"""The human report of `tasks_health`, from the document of status.report().

    render(doc) -> title and reasons, then one line per section: server, limits, queues,
                   running, results, counters, reload, state, start-up failure, pools,
                   workflows (unique keys, limits, dependencies); the workers table; the
                   schedules table
"""

import time

from ..protocol.text import plural
from ..protocol.workflows import describe_rate
from .formatting import clock, duration, progress_text, size, when
from .status import UNREACHABLE, expected_workers, next_try

PROGRESS_WIDTH = 40  # characters of a running task's progress in the workers table


def _table(header, rows, right=()):
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(cell).rjust(w) if i in right else str(cell).ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def _task_cell(task):
    if not task:
        return "-"
    cell = f"{task['name']} {task['id'][:12]} {duration(task.get('running_for'))}"
    if (task.get("attempt") or 1) > 1:
        cell += f" (attempt {task['attempt']})"
    if task.get("progress"):
        cell += f" [{progress_text(task['progress'], PROGRESS_WIDTH)}]"
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
    last = state.get("last_failure")
    if last and not state.get("failure"):
        lines.append(f"storage   last fault {last['errno']} on {last['op']} from "
                     f"{clock(last['since'], now)} to {clock(last['recovered_at'], now)}; "
                     f"{last['refused']} change(s) refused meanwhile")
    for event in (state.get("events") or [])[-3:]:  # files found gone, rewrites, recoveries
        lines.append(f"  - {clock(event['at'], now)}: {event['what']}")
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
    lines += ["", _server_line(doc)]
    lines += _limits_lines(doc)
    lines += _queue_lines(doc)
    lines += _reload_lines(server, now)
    lines += _state_lines(doc.get("state"), now)
    lines += _failure_lines(server.get("supervisor") or {}, now)
    lines += _pool_lines(doc.get("pools") or [])
    lines += _workflow_lines(doc.get("workflows") or {})
    lines += _worker_lines(doc, now)
    lines += _render_schedules(doc.get("schedules") or [], now)
    return "\n".join(lines) + "\n"


def _server_line(doc):
    server = doc.get("server") or {}
    kind = "embedded, " if server.get("embedded") else ""
    return (f"server    pid {server.get('pid')}  {server.get('address')}  up "
            f"{duration(server.get('uptime'))}  version {server.get('version')}  python "
            f"{server.get('python')}  ({kind}{_count(expected_workers(doc), 'worker')} x "
            f"{_count(server.get('threads'), 'thread')} each)")


def _count(value, word):
    return plural(value, word) if isinstance(value, int) else f"{value} {word}s"


def _limits_lines(doc):
    server, configured = doc.get("server") or {}, doc.get("limits") or {}
    limits = []
    if server.get("time_limit") is not None:
        limits.append(f"TIME_LIMIT {server['time_limit']:g} s")
    if server.get("max_worker_memory") is not None:
        limits.append(f"MAX_WORKER_MEMORY {server['max_worker_memory']} MiB")
    if server.get("max_task_memory") is not None:
        limits.append(f"MAX_TASK_MEMORY {server['max_task_memory']} MiB")
    for key, label in (("max_tasks_per_worker", "MAX_TASKS_PER_WORKER"),
                       ("max_queue", "MAX_QUEUE")):
        if configured.get(key) is not None:
            limits.append(f"{label} {configured[key]}")
    if server.get("connections") is not None:
        limits.append(f"connections {server['connections']} of MAX_CONNECTIONS "
                      f"{server.get('max_connections')}")
    return [f"limits    {'  '.join(limits)}"] if limits else []


def _reserved(doc):
    """", 3 reserved by workers (prefetch; counted pending)" when any are."""
    prefetch = doc.get("prefetch") or {}
    n = prefetch.get("reserved") or 0
    return f"  ({n} reserved by workers, ready: counted pending)" if n else ""


def _queue_lines(doc):
    queues = doc.get("queues") or {}
    queue_text = "  ".join(f"{name}: {q['ready']} ready, {q['deferred']} deferred"
                           for name, q in queues.items()) or "-"
    results = doc.get("results") or {}
    ttl = results.get("ttl")
    c = doc.get("counters") or {}
    return [
        f"queues    {queue_text}  (pending {doc.get('pending', 0)})",
        f"running   {doc.get('running', 0)}" + _reserved(doc),
        f"results   {results.get('stored', 0)} stored (max {results.get('max')}"
        + (f", ttl {ttl:g} s" if ttl is not None else "") + f")  "
        f"{results.get('evicted', 0)} evicted  {results.get('expired', 0)} expired",
        f"counters  enqueued {c.get('enqueued', 0)}  succeeded {c.get('succeeded', 0)}  "
        f"failed {c.get('failed', 0)}  worker lost {c.get('worker_lost', 0)}  timed out "
        f"{c.get('timed_out', 0)}  cancelled {c.get('cancelled', 0)}  retried "
        f"{c.get('retried', 0)}  restarts {c.get('worker_restarts', 0)}"
        + (f"  over memory {c['memory_exceeded']}" if c.get("memory_exceeded") else "")
        + (f"  rejected (queue full) {c['rejected_full']}" if c.get("rejected_full") else "")]


def _failure_lines(sup, now):
    failure = sup.get("last_failure")
    if not failure:
        return []
    state = "resolved" if failure.get("resolved") else next_try(sup)
    return [f"start-up  last failure {clock(failure.get('at'), now)}: worker "
            f"{failure.get('worker')} (pid {failure.get('pid')}) {failure.get('exit')}: "
            f"{failure.get('reason')} [{failure.get('streak')} in a row, {state}]"]


def _pool_lines(pools):
    """One line per pool, only when OPTIONS["POOLS"] names them (a single pool serving every
    queue is the plain case, already in the server line)."""
    if len(pools) < 2 and not any(p.get("queues") for p in pools):
        return []
    lines = []
    for pool in pools:
        limits = [f"{label} {pool[key]:g}{unit}" for key, label, unit in (
            ("time_limit", "TIME_LIMIT", " s"), ("max_task_memory", "MAX_TASK_MEMORY", " MiB"),
            ("max_worker_memory", "MAX_WORKER_MEMORY", " MiB"),
            ("max_tasks_per_worker", "MAX_TASKS_PER_WORKER", "")) if pool.get(key) is not None]
        lines.append(f"pool      {pool['name']}: {', '.join(pool.get('queues') or ['*'])}  "
                     f"{pool.get('workers_alive', 0)} of {pool.get('workers_expected')} "
                     f"worker(s) x {pool.get('threads')} thread(s)"
                     + (f"  {'  '.join(limits)}" if limits else ""))
    return lines


def _workflow_lines(flows):
    """Unique keys held, limit keys (the busiest), tasks waiting for their dependencies."""
    unique, limits = flows.get("unique") or {}, flows.get("limits") or {}
    waiting, held = flows.get("waiting_on_dependencies", 0), flows.get("held_for_dependents", 0)
    if not (unique.get("held") or limits.get("keys") or waiting or held):
        return []
    lines = [f"workflows unique keys held {unique.get('held', 0)}  limit keys "
             f"{limits.get('keys', 0)}  waiting on dependencies {waiting}"
             + (f"  results held past MAX_RESULTS for dependents {held}" if held else "")]
    for row in (limits.get("busiest") or [])[:5]:
        spec = "  ".join(part for part in (
            f"concurrency {row['concurrency']}" if row.get("concurrency") else "",
            f"rate {describe_rate(row['rate'])}" if row.get("rate") else "") if part)
        lines.append(f"  limit {row['key']}: {row['running']} running, {row['waiting']} waiting"
                     + (f", {row['starts_in_window']} starts in the window"
                        if row.get("starts_in_window") is not None else "") + f"  ({spec})")
    return lines


def _worker_lines(doc, now):
    workers = doc.get("workers") or []
    lines = ["", f"workers   {len(workers)} of {expected_workers(doc)}"]
    pooled = bool(_pool_lines(doc.get("pools") or []))  # pool names only when POOLS names them
    header = ("ID", "PID", "STATE", "RSS", "CPU %", "CURRENT TASK (name, id, running for)",
              "DONE", "STARTED")
    rows = []
    for worker in workers:
        tasks = worker.get("current_tasks") or (
            [worker["current_task"]] if worker.get("current_task") else [])
        state = worker.get("state") or "-"
        if worker.get("retiring"):
            state += " (retiring)"
        if pooled:
            state = f"{worker.get('pool')}: {state}"
        cpu = worker.get("cpu_percent")
        rows.append((worker.get("id"), worker.get("pid"), state, size(worker.get("rss_bytes")),
                     "-" if cpu is None else f"{cpu:.1f}", _task_cell(tasks[0] if tasks else None),
                     worker.get("tasks_done", 0), clock(worker.get("started_at"), now)))
        rows += [("", "", "", "", "", _task_cell(task), "", "") for task in tasks[1:]]
    if rows:
        lines += _table(header, rows, right={1, 3, 4, 6})
    else:
        lines.append("  (no worker process)")
    lines += [f"  {w['id']}: retiring, {w['retire_reason']}" for w in workers
              if w.get("retiring") and w.get("retire_reason")]
    return lines


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
        if item.get("skipped"):
            status += f"; {item['skipped']} slot(s) skipped (overlap: False)"
        rows.append((item["name"], item["task"], item["when"], when(item.get("next_run"), now),
                     when(last.get("due"), now), last.get("id") or "-", status))
    return lines + _table(header, rows)
