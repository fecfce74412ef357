"""Conversions between the server's plain record dicts and Django's `TaskResult`.

Runs in client and worker processes (never in the server). Task objects are resolved by module
path once per process and cached, so a `get_result` costs one round trip plus a dataclass.
"""

from dataclasses import fields
from datetime import UTC, datetime

from django.conf import settings
from django.tasks.base import Task, TaskError, TaskResult, TaskResultStatus
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


def _converter():
    """to_datetime with settings.USE_TZ read once (a LazySettings lookup per field adds up on the
    worker's path); read per call, not per process, so override_settings still applies."""
    tz = UTC if settings.USE_TZ else None
    fromtimestamp = datetime.fromtimestamp

    def convert(ts):
        return None if ts is None else fromtimestamp(ts, tz)

    return convert


def resolve_task(record):
    key = (record["task"], record["priority"], record["queue"], record["run_after"],
           record["backend"])
    task = _tasks.get(key)
    if task is None:
        try:
            base = import_string(record["task"])
        except ImportError as exc:
            raise ImportError(
                f"task {record['task']!r} (result {record['id']}) cannot be imported in this "
                f"process: {exc}. Every process that enqueues, runs or reads results must be "
                f"able to import the task's module.") from exc
        if not hasattr(base, "using"):
            raise ImportError(f"{record['task']!r} is not a Task: decorate it with "
                              "@django.tasks.task.")
        task = base.using(priority=record["priority"], queue_name=record["queue"],
                          run_after=to_datetime(record["run_after"]), backend=record["backend"])
        if len(_tasks) > 4096:
            _tasks.clear()
        _tasks[key] = task
    return task


def to_task_result(record, task=None):
    convert = _converter()
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
