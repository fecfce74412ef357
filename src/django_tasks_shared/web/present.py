"""Turn server snapshots into what the templates show: rows, times, sparklines, the chart.

Pure functions over the plain dicts of `TaskStore.overview()` / `get()`: no Django, no IPC, so
they are unit-tested directly. Sparklines and the chart are inline SVG built here, so the page
needs no charting library and makes no request for one.
"""

import json
import math
import time
from datetime import UTC, datetime

from ..health.formatting import duration, progress_text, size, took
from ..health.status import evaluate
from ..protocol.status import FINISHED, READY, RUNNING, SUCCESSFUL
from ..protocol.workflows import describe_rate

SPARK_W, SPARK_H = 120, 24
SPARK_WINDOW = 180.0  # seconds a worker sparkline spans (the server keeps 180 samples, ~1/s)
CHART_W, CHART_H = 600, 120
MIB = 1024 * 1024


def _y(value, top, height):
    """The y of `value` on a scale from 0 (bottom) to `top` (1 px below the top edge)."""
    return height - min(max(value, 0.0), top) / top * (height - 2) - 1


def _timed_points(samples, end, window, width, height, top):
    """SVG polyline points for (time, value) samples: x by time over the `window` seconds up to
    `end` (a worker younger than the window starts part-way), y from 0 to `top`."""
    top = max(top, 1e-9)
    return " ".join(f"{width * (1 - (end - t) / window):.1f},{_y(v, top, height):.1f}"
                    for t, v in samples if end - t <= window)


def nice_top(value):
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above `value` (a scale's round upper end)."""
    if value <= 0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * scale >= value * (1 - 1e-9):
            return step * scale
    return 10 * scale


def sparkline(samples, top, end=None, window=SPARK_WINDOW, width=SPARK_W, height=SPARK_H):
    """A worker's sparkline: (time, value) samples on an honest scale, 0 at the bottom and `top`
    at the top (the same `top` for every worker, so their lines compare)."""
    end = samples[-1][0] if samples and end is None else end
    return {"width": width, "height": height,
            "points": _timed_points(samples, end, window, width, height, top) if samples else ""}


def _range(values, fmt):
    """The values' range over the window ("40.0 MiB–44.7 MiB"), or the one value if all equal."""
    if not values:
        return ""
    low, high = fmt(min(values)), fmt(max(values))
    return low if low == high else f"{low}–{high}"


def chart(rate, window=600.0, width=CHART_W, height=CHART_H):
    """The tasks-finished-per-second chart over the last `window` seconds, newest at the right:
    polyline points, the peak (drawn as a dashed line: the chart's one figure for its height),
    the latest value. A window not yet full starts part-way (the server's history starts with
    the server)."""
    if not rate:
        return {"width": width, "height": height, "points": "", "peak": 0.0, "peak_y": None,
                "last": 0.0, "minutes": round(window / 60), "empty_until": str(width)}
    end = rate[-1][0]
    shown = [(t, v) for t, v in rate if end - t <= window]
    peak = max(v for _, v in shown)
    top = max(peak * 1.1, 1.0)  # headroom above the peak line; not a figure of its own
    first_x = width * (1 - (end - shown[0][0]) / window)
    return {"width": width, "height": height,
            "points": _timed_points(shown, end, window, width, height, top),
            "peak": round(peak, 1), "peak_y": f"{_y(peak, top, height):.1f}" if peak else None,
            "last": round(shown[-1][1], 1), "minutes": round(window / 60),
            "empty_until": f"{first_x:.1f}" if first_x > 1 else None}


def progress_bar(metadata):
    """set_progress() fields as a bar when they hold numbers `done` and `total` (total > 0):
    {"percent", "label" ("40 / 100"), "rest" (the other fields)}; None otherwise."""
    if not metadata:
        return None
    done, total = metadata.get("done"), metadata.get("total")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (done, total))
    if not numbers or total <= 0:
        return None
    rest = {k: v for k, v in metadata.items() if k not in ("done", "total")}
    percent = min(max(done / total, 0.0), 1.0) * 100
    # Strings, not floats: a template localizes floats ("40,5" in some languages), which would
    # break the CSS width and the SVG coordinates.
    return {"width": f"{percent:.1f}", "percent": f"{percent:.0f}",
            "label": f"{done:g} / {total:g}", "rest": progress_text(rest)}


def outcome_note(status, error, attempts):
    """The results table's ERROR cell: (text, kind). A task that succeeded after failed
    attempts is not an error: "succeeded on attempt 2" (kind "retried")."""
    if status == SUCCESSFUL:
        if not error:
            return "", ""
        if attempts and attempts > 1:
            return f"succeeded on attempt {attempts}", "retried"
        return "succeeded after a failed attempt", "retried"
    if not error:
        return "", ""
    return (f"{error}, after {attempts} attempts" if attempts and attempts > 1 else error), "error"


def _clock(ts, tz=UTC):
    """Wall-clock time in `tz` (the view passes Django's current time zone), to the ms."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def overview_context(snapshot, tz=UTC):
    """Template context for the live part of the overview, from one `overview` snapshot."""
    health, history = snapshot["health"], snapshot["history"]
    status, reasons = evaluate(health)
    server = health["server"]
    rings = history.get("workers") or {}
    # One RSS scale for every worker, from 0 to a round figure above the largest sample, so a
    # 40 -> 45 MiB rise looks like the 12 % it is and two workers' lines compare.
    rss_samples = {w["id"]: [(p[0], p[1]) for p in rings.get(w["id"]) or () if p[1] is not None]
                   for w in health["workers"]}  # None: not sampled yet
    rss_top = nice_top(max((v for s in rss_samples.values() for _, v in s), default=0) / MIB)
    cpu_samples = {w["id"]: [(p[0], p[2]) for p in rings.get(w["id"]) or () if p[2] is not None]
                   for w in health["workers"]}
    # CPU % is per core: a worker with several busy threads passes 100.
    cpu_top = max(100.0, nice_top(max((v for s in cpu_samples.values() for _, v in s),
                                      default=0)))
    end = max((s[-1][0] for s in (*rss_samples.values(), *cpu_samples.values()) if s),
              default=None)
    workers, running = [], []
    pools = (server.get("supervisor") or {}).get("pools") or []
    pooled = len(pools) > 1 or any(p.get("queues") for p in pools)  # OPTIONS["POOLS"] is set
    for worker in health["workers"]:
        rss, cpu = rss_samples[worker["id"]], cpu_samples[worker["id"]]
        current = worker.get("current_tasks") or []
        workers.append({
            "id": worker["id"], "pid": worker["pid"], "state": worker["state"],
            "pool": worker.get("pool") if pooled else None,
            "rss": size(worker.get("rss_bytes")), "cpu": worker.get("cpu_percent"),
            "rss_spark": sparkline([(t, v / MIB) for t, v in rss], rss_top, end),
            "rss_range": _range([v for _, v in rss], lambda v: size(v)),
            "cpu_spark": sparkline(cpu, cpu_top, end),
            "cpu_range": _range([v for _, v in cpu], lambda v: f"{v:.0f} %"),
            "tasks_done": worker["tasks_done"], "current": current,
            "uptime": duration(worker.get("uptime")),
        })
        for task in current:
            running.append({"id": task["id"], "name": task["name"], "pid": worker["pid"],
                            "worker": worker["id"], "seconds": task["running_for"],
                            "running_for": duration(task["running_for"]),
                            "attempt": task.get("attempt"),
                            "bar": progress_bar(task.get("progress")),
                            "progress": progress_text(task.get("progress"))})
    running.sort(key=lambda t: -t["seconds"])  # the longest-running first
    queues = [{"name": name, **counts} for name, counts in health["queues"].items()]
    for name in server.get("queues") or ():
        if name not in health["queues"]:
            queues.append({"name": name, "ready": 0, "deferred": 0})
    results = snapshot["results"]
    rows = []
    for row in results["rows"]:
        note, kind = outcome_note(row["status"], row.get("error"), row.get("attempts"))
        rows.append(dict(row, finished=_clock(row["finished_at"], tz), took=took(row["duration"]),
                         note=note, note_kind=kind))
    return {
        "status": status, "reasons": reasons, "server": server,
        "uptime": duration(server.get("uptime")), "queues": sorted(queues, key=lambda q: q["name"]),
        "running": running, "workers": workers, "counters": health["counters"],
        "pending": health["pending"], "results_info": health["results"],
        "chart": chart(history.get("rate") or []),
        "rss_scale": f"0–{rss_top:g} MiB", "cpu_scale": f"0–{cpu_top:g} %",
        "pools": pools if pooled else [], "workflows": workflows_context(health),
        "rows": rows, "offset": results["offset"], "limit": results["limit"],
        "more": results["more"], "first": results["offset"] + 1,
        "last": results["offset"] + len(rows),
        "newer": max(results["offset"] - results["limit"], 0) if results["offset"] else None,
        "older": results["offset"] + results["limit"] if results["more"] else None,
    }


def workflows_context(health):
    """The overview's workflow card: unique keys held, the busiest limit keys, dependents
    waiting; None when no task of the server uses them."""
    flows = health.get("workflows") or {}
    unique, limits = flows.get("unique") or {}, flows.get("limits") or {}
    waiting = flows.get("waiting_on_dependencies") or 0
    if not (unique.get("held") or limits.get("keys") or waiting):
        return None
    return {"unique_held": unique.get("held", 0), "unique_keys": unique.get("keys") or [],
            "limit_keys": limits.get("keys", 0), "waiting": waiting,
            "limits": [dict(row, rate=describe_rate(row.get("rate")))
                       for row in limits.get("busiest") or []]}


def workflow_facts(record):
    """A task's workflow fields for its page: (label, value, link id or None) rows."""
    facts = []
    if "unique" in record:
        facts.append(("unique key", f"{record['unique']['key']} (held until "
                                    f"{record['unique']['until']})", None))
    spec = record.get("limit")
    if spec:
        parts = [f"concurrency {spec['concurrency']}" if spec.get("concurrency") else "",
                 f"rate {describe_rate(spec.get('rate'))}" if spec.get("rate") else ""]
        facts.append(("limit", f"{spec['key']}: " + ", ".join(p for p in parts if p), None))
    for parent in record.get("after") or ():
        facts.append(("after", parent, parent))
    return facts


def _json(value):
    """One line when short, indented when long."""
    text = json.dumps(value)
    return text if len(text) <= 80 else json.dumps(value, indent=2)


def task_context(record, tz=UTC, now=None):
    """Template context for one task's page, from its record."""
    now = time.time() if now is None else now
    started, finished = record["started_at"], record["finished_at"]
    status = record["status"]
    attempt = record["last_attempted_at"]  # "ran for": this attempt (started_at is the first)
    ran = None if attempt is None or status == READY else took((finished or now) - attempt)
    attempts = len(record["worker_ids"])
    errors = [{"exception": e["exception_class_path"], "traceback": e["traceback"]}
              for e in record["errors"]]
    # Whose errors these are: a task that succeeded (or waits for its next attempt) after failed
    # attempts did not fail; its errors are those of the attempts before.
    if not errors:
        errors_title, errors_note = "Errors", ""
    elif status == SUCCESSFUL:
        errors_title = "Errors of the earlier attempts"
        earlier = "attempt 1" if attempts == 2 else f"attempts 1 to {attempts - 1}"
        errors_note = (f"The task succeeded on attempt {attempts}; {earlier} failed with the "
                       f"error{'s' if len(errors) > 1 else ''} below and "
                       f"{'was' if attempts == 2 else 'were'} retried.")
    elif status == READY:
        errors_title = "Errors of the earlier attempts"
        errors_note = (f"Attempt {attempts} failed; the task waits for its next attempt "
                       f"(due {_clock(record['run_after'], tz)}).")
    else:
        errors_title, errors_note = "Errors", ""
    metadata = {k: v for k, v in (record.get("metadata") or {}).items()
                if not str(k).startswith("_")}
    return {
        "record": record, "status": status,
        "finished": status in FINISHED,
        "can_cancel": status in (READY, RUNNING),
        "args": _json(record["args"]), "kwargs": _json(record["kwargs"]),
        "return_value": _json(record["return_value"]),
        "errors": errors, "errors_title": errors_title, "errors_note": errors_note,
        "progress_bar": progress_bar(metadata), "progress": progress_text(metadata, 400),
        "times": [("enqueued", _clock(record["enqueued_at"], tz)),
                  ("run after", _clock(record["run_after"], tz)),
                  ("started", _clock(started, tz)),
                  ("last attempt", _clock(record["last_attempted_at"], tz)),
                  ("finished", _clock(finished, tz)),
                  ("ran for" if finished else "running for", ran or "-")],
        "attempts": attempts,
        "workflow": workflow_facts(record),
    }
