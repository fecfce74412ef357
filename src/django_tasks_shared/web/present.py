"""Turn server snapshots into what the templates show: rows, times, sparklines, the chart.

Pure functions over the plain dicts of `TaskStore.overview()` / `get()`: no Django, no IPC, so
they are unit-tested directly. Sparklines and the chart are inline SVG built here, so the page
needs no charting library and makes no request for one.
"""

import json
import time
from datetime import UTC, datetime

from ..health.formatting import duration, progress_text, size, took
from ..health.status import evaluate
from ..protocol.status import FINISHED, READY, RUNNING

SPARK_W, SPARK_H = 120, 24
CHART_W, CHART_H = 600, 120


def _points(values, width, height, top=None):
    """SVG polyline points for `values` scaled into width x height (y grows downwards)."""
    if not values:
        return ""
    top = max(top if top is not None else max(values), 1e-9)
    step = width / max(len(values) - 1, 1)
    return " ".join(f"{i * step:.1f},{height - min(v, top) / top * (height - 2) - 1:.1f}"
                    for i, v in enumerate(values))


def sparkline(values, width=SPARK_W, height=SPARK_H, top=None):
    """Points scaled to `top` (default: 1.25 x the largest value, so a flat line is visible)."""
    if top is None:
        top = max(values, default=0) * 1.25
    return {"width": width, "height": height, "points": _points(values, width, height, top)}


def chart(rate, window=600.0, width=CHART_W, height=CHART_H):
    """The tasks-finished-per-second chart over the last `window` seconds, newest at the right:
    polyline points, the peak, the latest value. A window not yet full starts mid-way."""
    if not rate:
        return {"width": width, "height": height, "points": "", "peak": 0.0, "top": 1.0,
                "last": 0.0, "minutes": round(window / 60)}
    end = rate[-1][0]
    shown = [(t, v) for t, v in rate if end - t <= window]
    peak = max(v for _, v in shown)
    top = max(peak * 1.1, 1.0)
    points = " ".join(
        f"{width * (1 - (end - t) / window):.1f},{height - v / top * (height - 2) - 1:.1f}"
        for t, v in shown)
    return {"width": width, "height": height, "points": points, "peak": round(peak, 1),
            "top": round(top, 1), "last": round(shown[-1][1], 1), "minutes": round(window / 60)}


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
    workers, running = [], []
    for worker in health["workers"]:
        ring = rings.get(worker["id"]) or []
        rss = [p[1] for p in ring if p[1] is not None]  # None: not sampled yet
        cpu = [p[2] for p in ring if p[2] is not None]
        current = worker.get("current_tasks") or []
        workers.append({
            "id": worker["id"], "pid": worker["pid"], "state": worker["state"],
            "rss": size(worker.get("rss_bytes")), "cpu": worker.get("cpu_percent"),
            "rss_spark": sparkline(rss), "cpu_spark": sparkline(cpu, top=100.0),
            "tasks_done": worker["tasks_done"], "current": current,
            "uptime": duration(worker.get("uptime")),
        })
        for task in current:
            running.append({"id": task["id"], "name": task["name"], "pid": worker["pid"],
                            "worker": worker["id"], "seconds": task["running_for"],
                            "running_for": duration(task["running_for"]),
                            "attempt": task.get("attempt"),
                            "progress": progress_text(task.get("progress"))})
    running.sort(key=lambda t: -t["seconds"])  # the longest-running first
    queues = [{"name": name, **counts} for name, counts in health["queues"].items()]
    for name in server.get("queues") or ():
        if name not in health["queues"]:
            queues.append({"name": name, "ready": 0, "deferred": 0})
    results = snapshot["results"]
    rows = [dict(row, finished=_clock(row["finished_at"], tz), took=took(row["duration"]))
            for row in results["rows"]]
    return {
        "status": status, "reasons": reasons, "server": server,
        "uptime": duration(server.get("uptime")), "queues": sorted(queues, key=lambda q: q["name"]),
        "running": running, "workers": workers, "counters": health["counters"],
        "pending": health["pending"], "results_info": health["results"],
        "chart": chart(history.get("rate") or []),
        "rows": rows, "offset": results["offset"], "limit": results["limit"],
        "more": results["more"], "first": results["offset"] + 1,
        "last": results["offset"] + len(rows),
        "newer": max(results["offset"] - results["limit"], 0) if results["offset"] else None,
        "older": results["offset"] + results["limit"] if results["more"] else None,
    }


def _json(value):
    """One line when short, indented when long."""
    text = json.dumps(value)
    return text if len(text) <= 80 else json.dumps(value, indent=2)


def task_context(record, tz=UTC, now=None):
    """Template context for one task's page, from its record."""
    now = time.time() if now is None else now
    started, finished = record["started_at"], record["finished_at"]
    attempt = record["last_attempted_at"]  # "ran for": this attempt (started_at is the first)
    ran = None if attempt is None else took((finished or now) - attempt)
    return {
        "record": record, "status": record["status"],
        "finished": record["status"] in FINISHED,
        "can_cancel": record["status"] in (READY, RUNNING),
        "args": _json(record["args"]), "kwargs": _json(record["kwargs"]),
        "return_value": _json(record["return_value"]),
        "errors": [{"exception": e["exception_class_path"], "traceback": e["traceback"]}
                   for e in record["errors"]],
        "times": [("enqueued", _clock(record["enqueued_at"], tz)),
                  ("run after", _clock(record["run_after"], tz)),
                  ("started", _clock(started, tz)),
                  ("last attempt", _clock(record["last_attempted_at"], tz)),
                  ("finished", _clock(finished, tz)),
                  ("ran for" if finished else "running for", ran or "-")],
        "attempts": len(record["worker_ids"]),
    }
