"""Waiting for results and cancelling, from any process (the module-level API).

    wait(result)      -> "wait" round trip: the server holds it until the task finishes
    wait_all(results) -> "wait" on the LAST of a chunk, then ONE "get_many" for all of it
    cancel(result)    -> "cancel" round trip (+ "get" to refresh the result in place)
    on ANOTHER backend (django-tasks-db...): wait / wait_all poll result.refresh(), the interval
    growing from 0.05 s to 1 s
"""

import time

from django.tasks.base import TASK_REFRESH_ATTRS
from django.tasks.exceptions import InvalidTaskBackend, TaskResultDoesNotExist

from .backend import SharedBackend, direct_backends
from .results import to_task_result


def _refresh_in_place(result, record):
    """What TaskResult.refresh() does, from a record we already have."""
    fresh = to_task_result(record, result.task)
    for attr in TASK_REFRESH_ATTRS:
        object.__setattr__(result, attr, getattr(fresh, attr))


POLL_FIRST, POLL_FACTOR, POLL_MAX = 0.05, 1.5, 1.0  # seconds: the fallback's growing interval


def _lookup(alias):
    """TASKS[alias]'s backend, or one of ours built directly under that alias."""
    from django.tasks import task_backends

    try:
        return task_backends[alias]
    except InvalidTaskBackend:
        if alias in direct_backends:
            return direct_backends[alias]
        raise


def _backend(alias):
    """The backend of `alias`: ours, or another that can fetch results (then wait/wait_all
    poll it)."""
    backend = _lookup(alias)
    if isinstance(backend, SharedBackend):
        return backend
    if not backend.supports_get_result:
        raise NotImplementedError(
            f"wait() / wait_all() need a task backend that can fetch results; TASKS[{alias!r}] "
            f"({type(backend).__module__}.{type(backend).__qualname__}) has "
            f"supports_get_result = False. Use a backend that stores results, or don't wait.")
    return backend


def _poll(results, deadline, timeout):
    """Refresh each unfinished result until all are finished: POLL_FIRST s between rounds at
    first, growing by POLL_FACTOR up to POLL_MAX s (a quick task is seen quickly, a long one
    costs few queries). TimeoutError at the deadline."""
    interval = POLL_FIRST
    pending = list(results)
    while True:
        for result in pending:
            result.refresh()
        pending = [result for result in pending if not result.is_finished]
        remaining = deadline - time.monotonic()
        if not pending:
            return
        if remaining <= 0:
            raise TimeoutError(f"{len(pending)} task result(s) still unfinished after "
                               f"{timeout} s, e.g. {pending[0].id} ({pending[0].status})")
        time.sleep(min(interval, remaining))
        interval = min(interval * POLL_FACTOR, POLL_MAX)


def wait(result, timeout=30.0):
    """Block until `result` (a TaskResult) is finished; refreshes it in place and returns it.

    On our backends the server holds the call until the task finishes: no polling. On any
    other backend that supports get_result (django-tasks-db, django-tasks-rq, ...) it falls
    back to polling `result.refresh()`, every 0.05 s at first, the interval growing 1.5x per
    round up to 1 s. Raises TimeoutError if it is still unfinished after `timeout` seconds,
    NotImplementedError on a backend that cannot fetch results.
    """
    backend = _backend(result.backend)
    if not isinstance(backend, SharedBackend):
        _poll([result], time.monotonic() + timeout, timeout)
        return result
    record = backend.wait(result.id, timeout)
    _refresh_in_place(result, record)
    if not result.is_finished:
        raise TimeoutError(f"task result {result.id} is still {result.status} after {timeout} s")
    return result


def cancel(result, backend=None):
    """Cancel a pending or running task: it ends FAILED with `exceptions.TaskCancelled`.

    `result` is a TaskResult, or a result id with `backend` naming its backend alias (default
    "default"). Returns True if a task was cancelled; False if it had already finished or is
    unknown (nothing changes). A pending task never runs; a running one has its worker process
    stopped (its sibling tasks on that worker end WorkerLost) and the worker is replaced. A
    TaskResult passed in is refreshed in place. One round trip; never starts a server.
    """
    if isinstance(result, str):
        task_id, alias, result = result, backend or "default", None
    elif hasattr(result, "id") and hasattr(result, "backend"):
        task_id, alias = result.id, backend or result.backend
    else:
        raise TypeError(f"cancel() takes a TaskResult or a result id, not "
                        f"{type(result).__name__}")
    shared = _lookup(alias)
    if not isinstance(shared, SharedBackend):
        raise TypeError(f"TASKS[{alias!r}] is {type(shared).__name__}, not a django-tasks-shared "
                        f"backend: it cannot cancel tasks")
    cancelled = shared.client.call("cancel", task_id)
    if result is not None:
        record = shared.client.call("get", task_id)
        if record is not None:
            _refresh_in_place(result, record)
    return cancelled


WAIT_ALL_CHUNK = 500  # results fetched per get_many in wait_all


def wait_all(results, timeout=30.0):
    """Block until every TaskResult in `results` is finished; refreshes each in place.

    A few round trips for the whole batch instead of one per result: per chunk of results (of
    one backend), the server waits for the LAST unfinished one (tasks of equal priority start
    in FIFO order, so by then nearly all are done), then ONE `get_many` fetches all of them;
    any still unfinished go round again. Results of another backend that supports get_result
    are polled instead, as `wait()` does (one `refresh()` per unfinished result per round, the
    interval growing from 0.05 s to 1 s). Raises TimeoutError when `timeout` runs out,
    TaskResultDoesNotExist for an unknown or evicted id, NotImplementedError on a backend that
    cannot fetch results. Returns `results`.
    """
    deadline = time.monotonic() + timeout
    groups: dict[str, list] = {}
    for result in results:
        groups.setdefault(result.backend, []).append(result)
    for alias, group in groups.items():
        backend = _backend(alias)
        if not isinstance(backend, SharedBackend):
            _poll(group, deadline, timeout)
            continue
        for start in range(0, len(group), WAIT_ALL_CHUNK):
            pending = group[start:start + WAIT_ALL_CHUNK]
            while pending:
                remaining = deadline - time.monotonic()
                record = backend.wait(pending[-1].id, max(0.0, remaining))
                if len(pending) == 1:
                    records = [record]
                else:
                    records = backend.call("get_many", [r.id for r in pending])
                still = []
                for result, record in zip(pending, records, strict=True):
                    if record is None:
                        raise TaskResultDoesNotExist(result.id)
                    _refresh_in_place(result, record)
                    if not result.is_finished:
                        still.append(result)
                pending = still
                if pending and time.monotonic() >= deadline:
                    raise TimeoutError(f"{len(pending)} task result(s) still unfinished after "
                                       f"{timeout} s, e.g. {pending[0].id}")
    return results


__all__ = ["cancel", "wait", "wait_all"]
