"""OPTIONS["SCHEDULE"] entries: their validation and their due times (no Django: the server's
scheduler uses next_due() too).

    settings OPTIONS["SCHEDULE"] = {name: {"task", "cron" | "every", "args", "kwargs", ...}}
      -> validate()      (client/options.py, any process: shape, cron syntax, time zone, queue,
                          JSON args)
      -> resolve_tasks() (resolve.py, Django set up: each task path imports to a Task)
      -> Config.schedules (plain dicts) -> Config.to_spec() JSON -> the server process
      -> scheduler.Scheduler asks next_due(entry, after) when to enqueue next
"""

import json
import math
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

KEYS = ("task", "cron", "every", "args", "kwargs", "priority", "queue_name", "timezone",
        "overlap")
MIN_EVERY = 0.1  # seconds; a smaller interval would be a busy loop in the server
MIN_PRIORITY, MAX_PRIORITY = -100, 100  # django.tasks.base.TASK_MIN/MAX_PRIORITY


class ScheduleError(ValueError):
    """A schedule entry is wrong; the message names the entry and the fix."""


def validate(schedule, *, queues, default_timezone="UTC"):
    """OPTIONS["SCHEDULE"] -> a tuple of normalised entry dicts (JSON-compatible), or raise."""
    if schedule is None:
        return ()
    if not isinstance(schedule, dict):
        raise ScheduleError("OPTIONS['SCHEDULE'] must be a dict of name -> entry, e.g. "
                            "{'heartbeat': {'task': 'app.tasks.beat', 'every': 30}}; got "
                            f"{type(schedule).__name__}.")
    return tuple(_entry(name, value, queues, default_timezone)
                 for name, value in schedule.items())


def _entry(name, value, queues, default_timezone):
    if not isinstance(name, str) or not name:
        raise ScheduleError(f"OPTIONS['SCHEDULE'] names must be non-empty strings, got {name!r}.")
    where = f"OPTIONS['SCHEDULE'][{name!r}]"
    if not isinstance(value, dict):
        raise ScheduleError(f"{where} must be a dict with 'task' and 'cron' or 'every', got "
                            f"{type(value).__name__}.")
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise ScheduleError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid "
                            f"keys are {', '.join(KEYS)}.")
    task = value.get("task")
    if not isinstance(task, str) or "." not in task:
        raise ScheduleError(f"{where}: 'task' must be the dotted path of a @task function, "
                            f"e.g. 'myapp.tasks.report'; got {task!r}.")
    cron, every = value.get("cron"), value.get("every")
    if (cron is None) == (every is None):
        raise ScheduleError(f"{where}: give exactly one of 'cron' (e.g. '0 3 * * *') and 'every' "
                            f"(seconds), not {'both' if cron is not None else 'neither'}.")
    timezone = value.get("timezone")
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, (int, float)) or \
                not math.isfinite(every) or every < MIN_EVERY:
            raise ScheduleError(f"{where}: 'every' must be a number of seconds >= {MIN_EVERY}, "
                                f"got {every!r}.")
        if timezone is not None:
            raise ScheduleError(f"{where}: 'timezone' applies to 'cron' only; remove it (an "
                                "'every' interval has no time zone).")
        every = float(every)
    else:
        timezone = timezone if timezone is not None else default_timezone
        try:
            tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ScheduleError(f"{where}: unknown time zone {timezone!r}; use an IANA name "
                                "such as 'UTC' or 'Europe/Paris'.")
        if not isinstance(cron, str):
            raise ScheduleError(f"{where}: 'cron' must be a string such as '0 3 * * *', got "
                                f"{cron!r}.")
        from cronsim import CronSim, CronSimError  # here: most processes never need it

        try:
            CronSim(cron, datetime.now(tz))
        except CronSimError as exc:
            raise ScheduleError(f"{where}: bad cron expression {cron!r}: {exc}. Use five "
                                "fields: minute hour day-of-month month day-of-week.")
    args, kwargs = value.get("args", []), value.get("kwargs", {})
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise ScheduleError(f"{where}: 'args' must be a list and 'kwargs' a dict.")
    try:
        # A JSON round trip: the task sees exactly what a worker will (tuples become lists).
        args, kwargs = json.loads(json.dumps([list(args), kwargs]))
    except (TypeError, ValueError) as exc:
        raise ScheduleError(f"{where}: 'args' and 'kwargs' must be JSON-serializable ({exc}).")
    priority = value.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)
                                 or not MIN_PRIORITY <= priority <= MAX_PRIORITY):
        raise ScheduleError(f"{where}: 'priority' must be a whole number from {MIN_PRIORITY} to "
                            f"{MAX_PRIORITY}, got {priority!r}.")
    overlap = value.get("overlap", True)
    if not isinstance(overlap, bool):
        raise ScheduleError(f"{where}: 'overlap' must be True (the default: a due run is "
                            f"enqueued even while the previous one is pending or running) or "
                            f"False (the due run is skipped then), got {overlap!r}.")
    queue = value.get("queue_name")
    if queue is not None and queue not in queues:
        raise ScheduleError(f"{where}: queue {queue!r} is not in this backend's QUEUES "
                            f"({', '.join(map(repr, queues))}); add it there or pick one of them.")
    return {"name": name, "task": task, "cron": cron, "every": every, "timezone": timezone,
            "args": args, "kwargs": kwargs, "priority": priority, "queue_name": queue,
            "takes_context": False, "overlap": overlap}


def next_due(entry, after):
    """The first due time (a time.time() float) strictly after `after`."""
    if entry["every"] is not None:
        return after + entry["every"]
    from cronsim import CronSim

    tz = ZoneInfo(entry["timezone"])
    # cronsim works in whole minutes; it returns the first match strictly after its start.
    return next(CronSim(entry["cron"], datetime.fromtimestamp(after, tz))).timestamp()


def describe(entry):
    """'every 30 s' / "cron '0 3 * * *' Europe/Paris" for logs and the health report."""
    if entry.get("every") is not None:
        return f"every {entry['every']:g} s"
    return f"cron '{entry['cron']}' {entry['timezone']}"
