"""The workflow fields of a record (v0.3), in the form every process reads them.

    client  @unique(key, until) / @limit(concurrency, rate, key) / after(results, task, ...)
            -> record["unique"] = {"key", "until"}, record["limit"] = {"key", "concurrency",
               "rate": [n, seconds]}, record["after"] = [ids]           (client/workflows.py)
    server  store/unique.py, store/limits.py, store/dependencies.py read them; the server never
            imports the task, so a key is computed in the client, at enqueue

Keys are scoped by the task's dotted path: two tasks never share a unique key or a limit.
No Django here (the server and the schedules' resolver use it too).
"""

import hashlib
import json

UNTIL = ("finished", "started")
RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
MAX_RAW_KEY = 200  # characters of arguments' JSON kept as they are in a key; longer: a digest


def parse_rate(rate, where="@limit"):
    """"10/m" -> [10, 60.0]; a ValueError naming the fix otherwise."""
    if not isinstance(rate, str) or rate.count("/") != 1:
        raise ValueError(f"{where}: rate must be a string such as '10/s', '30/m' or '100/h', "
                         f"got {rate!r}.")
    count, unit = (part.strip() for part in rate.split("/"))
    if not count.isdigit() or int(count) < 1 or unit not in RATE_UNITS:
        raise ValueError(f"{where}: rate {rate!r} must be a whole number >= 1, '/', and one of "
                         f"s, m, h (per second, minute, hour), e.g. '10/m'.")
    return [int(count), RATE_UNITS[unit]]


def arguments_key(args, kwargs):
    """The normalised JSON of (already JSON-normalised) arguments, or its digest when long."""
    text = json.dumps([args, kwargs], sort_keys=True, separators=(",", ":"))
    if len(text) <= MAX_RAW_KEY:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def scoped(task_path, user_key):
    """A key of the task `task_path`: "<path>:<the user's key>"."""
    return f"{task_path}:{user_key}"


def describe_rate(rate):
    """[10, 60.0] -> "10/m"."""
    if not rate:
        return None
    n, period = rate
    unit = next((u for u, seconds in RATE_UNITS.items() if seconds == period), None)
    return f"{n:g}/{unit}" if unit else f"{n:g}/{period:g}s"
