"""How a task server's figures read, the same in the terminal report (render.py) and on the web
page (web/present.py): durations, sizes, clock times, a running task's progress.
"""

from datetime import datetime


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


def when(timestamp, now):
    """A clock time with how far away it is, past or future."""
    if timestamp is None:
        return "-"
    if timestamp <= now:
        return clock(timestamp, now)
    moment = datetime.fromtimestamp(timestamp)
    fmt = "%H:%M:%S" if timestamp - now < 86400 else "%Y-%m-%d %H:%M"
    return f"{moment.strftime(fmt)} (in {duration(timestamp - now)})"


def took(seconds):
    """A task's run time: ms below a second (most tasks), then as duration() has it."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms" if seconds < 0.01 else f"{seconds * 1000:.0f} ms"
    return duration(seconds)


def progress_text(metadata, width=80):
    """set_progress() fields as one short line: {"done": 40, "total": 100} -> "done=40,
    total=100" ("" when none; keys starting with "_" are the backend's), cut to `width`."""
    if not metadata:
        return ""
    text = ", ".join(f"{key}={value}" for key, value in metadata.items()
                     if not str(key).startswith("_"))
    return text if len(text) <= width else text[:width - 1] + "…"
