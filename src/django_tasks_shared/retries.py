"""Retries with back-off: the `@retry` decorator, the policy a record carries, and its rules.

    @task / @retry(max_attempts=3, on=(IOError,)) / def f(...)   (marks f, returns f unchanged)
    Backend.enqueue: effective_policy(task.func, OPTIONS["RETRY"])
        -> record["retry"] = {"max_attempts", "delay", "factor", "max_delay", "on": [class paths]}
    worker (execution.py):  the task raised exc -> wants_retry(policy, exc, attempt)
        -> outcome["retry"] = True, and no task_finished signal yet (it is not the end)
    server (store.py):      outcome["retry"] -> back to READY, same id, due after backoff()
                            supervisor ended it (WorkerLost, TimeLimitExceeded,
                            MemoryLimitExceeded) -> retried only if that class path is listed in
                            "on" by name (a task may have had side effects before it was cut off)

The server never imports user code, so the record carries class paths and this module imports
nothing from Django: the server, the workers and the clients all use it.
"""

import importlib
import random

DEFAULTS = {"max_attempts": 3, "delay": 1.0, "factor": 2.0, "max_delay": 300.0,
            "on": ("builtins.Exception",)}
ATTRIBUTE = "django_tasks_shared_retry"  # set on the task function by @retry
JITTER = 0.1  # a retry becomes due up to 10 % later than the back-off says, never earlier
TASK_CANCELLED = "django_tasks_shared.exceptions.TaskCancelled"
# Never retried: a cancelled task stays cancelled; a too large return value is too large again.
NEVER = (TASK_CANCELLED, "django_tasks_shared.exceptions.PayloadTooLarge")
# Ended by the supervisor, not raised in the task: retried only when listed in `on` by name.
SUPERVISOR_ENDED = ("django_tasks_shared.exceptions.WorkerLost",
                    "django_tasks_shared.exceptions.TimeLimitExceeded",
                    "django_tasks_shared.exceptions.MemoryLimitExceeded")
_UNSET = object()


def class_path(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


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
    out = {}
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


def retry(function=None, *, max_attempts=_UNSET, delay=_UNSET, factor=_UNSET,
          max_delay=_UNSET, on=_UNSET):
    """Retry the task below `@task` when it raises one of `on`, with exponential back-off.

    Attempt n failing schedules attempt n+1 after min(delay * factor ** (n - 1), max_delay)
    seconds (up to 10 % later: jitter). Keys not given come from the backend's
    OPTIONS["RETRY"], then from the defaults (3 attempts, 1 s, x2, at most 300 s, Exception).
    WorkerLost, TimeLimitExceeded and MemoryLimitExceeded are retried only when `on` names them.
    The function is returned unchanged (still callable and importable), only marked.
    """
    given = {k: v for k, v in (("max_attempts", max_attempts), ("delay", delay),
                               ("factor", factor), ("max_delay", max_delay), ("on", on))
             if v is not _UNSET}
    policy = normalize(given, "@retry")

    def mark(func):
        target = getattr(func, "func", None) if hasattr(func, "module_path") else func
        if target is None or not callable(target):
            raise TypeError(f"@retry decorates a task function, got {func!r}.")
        setattr(target, ATTRIBUTE, policy)  # a Task (retry above @task): mark its function
        return func

    return mark if function is None else mark(function)


def effective_policy(func, backend_policy):
    """The record's "retry" field: @retry's keys over OPTIONS["RETRY"] over DEFAULTS, or None
    when neither says anything or only one attempt is allowed."""
    own = getattr(func, ATTRIBUTE, None)
    if own is None and backend_policy is None:
        return None
    policy = {**DEFAULTS, **(backend_policy or {}), **(own or {})}
    policy["on"] = list(policy["on"])
    return policy if policy["max_attempts"] > 1 else None


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
