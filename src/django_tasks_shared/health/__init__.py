"""A task server's health: its status, the `--json` document and the terminal report, from one
`health` snapshot. Pure functions over plain data: no Django, no IPC (unit-tested directly).

    status.py      evaluate() -> healthy / degraded with reasons; report(); unreachable_report()
    render.py      the human report of `tasks_health`
    formatting.py  durations, sizes, times, progress: shared with the web page
"""

from .formatting import duration, progress_text, size
from .render import render
from .status import (
    DEGRADED,
    EXIT_CODES,
    HEALTHY,
    UNREACHABLE,
    evaluate,
    expected_workers,
    report,
    unreachable_report,
)

__all__ = ["DEGRADED", "EXIT_CODES", "HEALTHY", "UNREACHABLE", "duration", "evaluate",
           "expected_workers", "progress_text", "render", "report", "size",
           "unreachable_report"]
