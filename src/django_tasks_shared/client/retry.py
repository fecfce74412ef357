"""The `@retry` decorator and the policy a task's record gets at enqueue.

    @task / @retry(max_attempts=3, on=(IOError,)) / def f(...)   (marks f, returns f unchanged)
    Backend.enqueue / a schedule's resolve: effective_policy(task.func, OPTIONS["RETRY"])
        -> record["retry"] (the rules that apply it: protocol/retry_policy.py)
"""

from ..protocol.retry_policy import DEFAULTS, normalize

ATTRIBUTE = "django_tasks_shared_retry"  # set on the task function by @retry
_UNSET = object()


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
