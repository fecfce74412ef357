"""Run one claimed task the way Django's ImmediateBackend does, and describe the outcome.

    record (RUNNING, from finish_and_claim) -> TaskResult -> task_started signal
        -> Task.call(...) (context, coroutines via async_to_sync) -> normalize_json(return)
        -> task_finished signal -> outcome dict for the next finish_and_claim
"""

import json
import time
from contextvars import ContextVar
from traceback import format_exception

from django.db import close_old_connections
from django.tasks.base import TaskContext, TaskError, TaskResultStatus
from django.tasks.signals import task_finished, task_started
from django.utils.json import normalize_json

from .exceptions import PayloadTooLarge
from .records import to_datetime, to_task_result

# Set while a task runs: the id of its TaskResult (a drop-in for django-tasks-local's).
current_result_id: ContextVar[str] = ContextVar("current_result_id")


def _error(exc):
    cls = type(exc)
    return {"exception_class_path": f"{cls.__module__}.{cls.__qualname__}",
            "traceback": "".join(format_exception(exc))}


def _check_size(value, max_payload):
    """A return value over MAX_PAYLOAD fails the task instead of bloating the server."""
    if max_payload is not None:
        size = len(json.dumps(value))
        if size > max_payload:
            raise PayloadTooLarge(
                f"the return value takes {size} bytes as JSON, over MAX_PAYLOAD={max_payload}; "
                f"store large results elsewhere (a file, the database) and return a reference")


def execute(record, sender, max_payload=None):
    """Run the task of `record`; returns the outcome dict. `sender` is the backend class."""
    try:
        result = to_task_result(record)
    except Exception as exc:  # unimportable task: it fails, the worker lives on
        return {"id": record["id"], "status": "FAILED", "finished_at": time.time(),
                "errors": [_error(exc)]}
    task = result.task
    token = current_result_id.set(result.id)
    close_old_connections()  # as a request would: no stale DB connection between tasks
    try:
        task_started.send(sender=sender, task_result=result)
        try:
            if task.takes_context:
                raw = task.call(TaskContext(task_result=result), *result.args, **result.kwargs)
            else:
                raw = task.call(*result.args, **result.kwargs)
            value = normalize_json(raw)
            _check_size(value, max_payload)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            outcome = {"id": result.id, "status": "FAILED", "finished_at": time.time(),
                       "errors": [_error(exc)]}
            _set(result, outcome)
            result.errors.append(TaskError(**outcome["errors"][0]))
            task_finished.send(sender=sender, task_result=result)
        else:
            outcome = {"id": result.id, "status": "SUCCESSFUL", "finished_at": time.time(),
                       "return_value": value}
            _set(result, outcome)
            object.__setattr__(result, "_return_value", value)
            task_finished.send(sender=sender, task_result=result)
        return outcome
    finally:
        close_old_connections()
        current_result_id.reset(token)


def _set(result, outcome):
    object.__setattr__(result, "status", TaskResultStatus(outcome["status"]))
    object.__setattr__(result, "finished_at", to_datetime(outcome["finished_at"]))
