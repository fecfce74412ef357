"""The rules of a record's retry policy, the same in every process that applies them.

    client   @retry / OPTIONS["RETRY"] ─normalize()─> record["retry"] = {"max_attempts", "delay",
             "factor", "max_delay", "on": [class paths]}           (client/retry.py)
    worker   the task raised exc -> wants_retry(policy, exc, attempt)
             -> outcome["retry"] = True, and no task_finished signal yet (it is not the end)
    server   outcome["retry"] -> back to READY, same id, due after backoff()
             supervisor ended it (WorkerLost, TimeLimitExceeded, MemoryLimitExceeded) -> tried
             again only if that class path is listed in "on" by name (a task may have had side
             effects before it was cut off): retries_supervisor_end()

The server never imports user code, so the record carries class paths, and this module imports
nothing from Django.
"""

import importlib
import random
from typing import Any

from .status import (
    MEMORY_LIMIT_EXCEEDED,
    PAYLOAD_TOO_LARGE,
    TASK_CANCELLED,
    TIME_LIMIT_EXCEEDED,
    WORKER_LOST,
    class_path,
)

DEFAULTS = {"max_attempts": 3, "delay": 1.0, "factor": 2.0, "max_delay": 300.0,
            "on": ("builtins.Exception",)}
JITTER = 0.1  # a retry becomes due up to 10 % later than the back-off says, never earlier
# Never retried: a cancelled task stays cancelled; a too large return value is too large again.
NEVER = (TASK_CANCELLED, PAYLOAD_TOO_LARGE)
# Ended by the supervisor, not raised in the task: retried only when listed in `on` by name.
SUPERVISOR_ENDED = (WORKER_LOST, TIME_LIMIT_EXCEEDED, MEMORY_LIMIT_EXCEEDED)


def _import(path):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _exception_path(value, where):
    """An exception class or its dotted path -> the dotted path, checked to import."""
    if isinstance(value, str):
        try:
            cls = _import(value)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ValueError(f"{where}: 'on' entry {value!r} cannot be imported ({exc}); give "
                             "an exception class or its full dotted path.") from None
    else:
        cls = value
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        raise ValueError(f"{where}: 'on' entry {value!r} is not an exception class.")
    path = class_path(cls)
    if path == TASK_CANCELLED:
        raise ValueError(f"{where}: TaskCancelled is never retried (a cancelled task must stay "
                         "cancelled); remove it from 'on'.")
    return path


def normalize(values, where):
    """Validated policy fields (only those given) in record form: `on` as class paths."""
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys "
                         f"are {', '.join(DEFAULTS)}.")
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key == "on":
            if isinstance(value, (str, type)):
                value = (value,)
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"{where}: 'on' must be a non-empty tuple of exception classes "
                                 f"(or dotted paths), got {value!r}.")
            out["on"] = [_exception_path(v, where) for v in value]
            continue
        whole = key == "max_attempts"
        minimum = {"max_attempts": 1, "factor": 1}.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (whole and int(value) != value) or value < minimum:
            raise ValueError(f"{where}: {key!r} must be a {'whole ' if whole else ''}number >= "
                             f"{minimum}, got {value!r}.")
        out[key] = int(value) if whole else float(value)
    return out


def backoff(policy, attempt, rng=random.random):
    """Seconds before attempt `attempt + 1`, after attempt `attempt` (1-based) failed."""
    base = min(policy["delay"] * policy["factor"] ** (attempt - 1), policy["max_delay"])
    return base * (1 + JITTER * rng())


def attempts_left(policy, attempt):
    return policy is not None and attempt < policy["max_attempts"]


def wants_retry(policy, exc, attempt):
    """Worker side: does the exception `exc`, raised by attempt `attempt`, get another try?"""
    if not attempts_left(policy, attempt) or class_path(type(exc)) in NEVER:
        return False
    classes = []
    for path in policy["on"]:
        try:
            classes.append(_import(path))
        except (ImportError, AttributeError, ValueError):
            continue  # checked at enqueue; a class gone since then matches nothing
    return isinstance(exc, tuple(classes))


def retries_supervisor_end(policy, exception_path, attempt):
    """Server side: is a task ended by the supervisor with `exception_path` tried again?"""
    return attempts_left(policy, attempt) and exception_path in SUPERVISOR_ENDED and \
        exception_path in policy["on"]
