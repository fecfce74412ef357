"""Conversions between the server's plain record dicts and Django's `TaskResult`.

Runs in client and worker processes (never in the server). Task objects are resolved by module
path once per process and cached, so a `get_result` costs one round trip plus a dataclass.

    record["task"] ─import_string─> Task ─using(priority, queue, run_after, backend)─> cached
                   └─ does not import (module gone, renamed, `__main__` of another process),
                      or is no Task ─> a stand-in Task (missing_task): the result stays
                      readable, calling the task raises ImportError saying why
    record["backend"] not in settings.TASKS (a backend built directly) ─> the task keeps the
                      backend its decorator named: Django's registry cannot find the alias
"""

from dataclasses import fields
from datetime import UTC, datetime

from django.conf import settings
from django.tasks.base import Task, TaskError, TaskResult, TaskResultStatus
from django.tasks.exceptions import InvalidTask, InvalidTaskBackend
from django.utils.module_loading import import_string

_tasks: dict[tuple, Task] = {}  # (path, priority, queue, run_after, backend) -> Task
_STATUS = {s.value: s for s in TaskResultStatus}
# Django's development branch adds TaskResult.raw_metadata; 6.x has no such field (use progress()).
_HAS_METADATA = "raw_metadata" in {f.name for f in fields(TaskResult)}


def to_timestamp(value):
    return None if value is None else value.timestamp()


def to_datetime(ts):
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC) if settings.USE_TZ else datetime.fromtimestamp(ts)


def converter():
    """to_datetime with settings.USE_TZ read once (a LazySettings lookup per field adds up on the
    worker's path); read per call, not per process, so override_settings still applies."""
    tz = UTC if settings.USE_TZ else None
    fromtimestamp = datetime.fromtimestamp

    def convert(ts):
        return None if ts is None else fromtimestamp(ts, tz)

    return convert


def resolve_task(record):
    """The record's Task (cached), or a stand-in when its module path does not give one here."""
    key = (record["task"], record["priority"], record["queue"], record["run_after"],
           record["backend"])
    task = _tasks.get(key)
    if task is None:
        try:
            base = import_string(record["task"])
        except ImportError as exc:
            return missing_task(record, f"cannot be imported in this process: {exc}")
        if not isinstance(base, Task):
            return missing_task(record, "is not a Task: decorate it with @django.tasks.task")
        task = _rebind(base, record)
        if len(_tasks) > 4096:
            _tasks.clear()
        _tasks[key] = task
    return task


def _rebind(base, record):
    """`base` with the record's priority, queue, run_after and backend alias. An alias that
    settings.TASKS lacks (a backend built directly) is left as the decorator set it; a task
    that Django's validation refuses now (settings changed since the enqueue) is still built,
    unvalidated: a stored result must stay readable."""
    changes = {"priority": record["priority"], "queue_name": record["queue"],
               "run_after": to_datetime(record["run_after"])}
    if record["backend"] in (getattr(settings, "TASKS", None) or {}):
        changes["backend"] = record["backend"]
    try:
        return base.using(**changes)
    except (InvalidTask, InvalidTaskBackend):
        return _unvalidated(type(base), **{f.name: getattr(base, f.name) for f in fields(base)}
                            | changes)


def _unvalidated(cls, **values):
    """A Task dataclass without its __post_init__ (which asks the backend to validate it)."""
    task = object.__new__(cls)
    for name, value in values.items():
        object.__setattr__(task, name, value)
    return task


def missing_task(record, why):
    """A stand-in Task for a result whose task this process cannot import (its module was
    removed or renamed, it was defined in another process's `__main__`...). The result stays
    readable: `task.module_path` and `task.name` are the recorded ones; calling it raises
    ImportError with `why`, and enqueueing it is refused (SharedBackend.validate_task)."""
    path = record["task"]
    module, _, qualname = path.rpartition(".")
    message = (f"task {path!r} (result {record['id']}) {why}. Every process that runs or "
               f"re-enqueues a task must be able to import the task's module.")

    def unavailable(*args, **kwargs):
        raise ImportError(message)

    unavailable.__module__ = module
    unavailable.__qualname__ = qualname
    unavailable.__name__ = qualname.rpartition(".")[2]
    unavailable.missing_task = message  # type: ignore[attr-defined]
    return _unvalidated(
        Task, func=unavailable, priority=record["priority"], backend=record["backend"],
        queue_name=record["queue"], run_after=to_datetime(record["run_after"]),
        takes_context=record["takes_context"])


def to_task_result(record, task=None):
    convert = converter()
    started = record["started_at"]
    # A claimed record's started_at and last_attempted_at are one timestamp: one datetime
    # (immutable, so sharing it is safe).
    started_at = convert(started)
    last = record["last_attempted_at"]
    result: TaskResult = TaskResult(
        task=task or resolve_task(record),
        id=record["id"],
        status=_STATUS[record["status"]],
        enqueued_at=convert(record["enqueued_at"]),
        started_at=started_at,
        finished_at=convert(record["finished_at"]),
        last_attempted_at=started_at if last == started else convert(last),
        args=record["args"],
        kwargs=record["kwargs"],
        backend=record["backend"],
        errors=[TaskError(**error) for error in record["errors"]],
        worker_ids=list(record["worker_ids"]),
    )
    object.__setattr__(result, "_return_value", record["return_value"])
    if _HAS_METADATA:
        object.__setattr__(result, "raw_metadata", dict(record.get("metadata") or {}))
    return result
