"""Run one claimed task the way Django's ImmediateBackend does, and describe the outcome.

    record (RUNNING, from finish_and_claim) -> TaskResult -> task_started signal (every attempt)
        -> Task.call(...) (context, coroutines via async_to_sync) -> normalize_json(return)
        -> MAX_PAYLOAD check (json.dumps only when the type gives no small bound)
        -> task_finished signal (once: not after an attempt that will be retried)
        -> outcome dict for the next finish_and_claim (with "retry" when the policy gives the
           failed attempt another try, and the progress set_progress still held back)
"""

import inspect
import json
import logging
import threading
import time
from contextvars import ContextVar
from traceback import format_exception

import django.tasks.base
from django.db import close_old_connections, connections
from django.tasks.base import Task, TaskContext, TaskError, TaskResultStatus
from django.tasks.signals import task_finished, task_started
from django.utils.json import normalize_json

from ..client.results import to_datetime, to_task_result
from ..exceptions import PayloadTooLarge
from ..protocol.retry_policy import wants_retry
from ..protocol.status import FAILED, SUCCESSFUL, class_path
from . import workflow
from .progress import Run, _reporter

logger = logging.getLogger("django_tasks_shared.worker")

# Set while a task runs: the id of its TaskResult (a drop-in for django-tasks-local's).
current_result_id: ContextVar[str] = ContextVar("current_result_id")


def _error(exc):
    return {"exception_class_path": class_path(type(exc)),
            "traceback": "".join(format_exception(exc))}


# Return values whose JSON size has a small bound, by exact type (subclasses take the full path):
# None/bool -> 5 bytes at most, an int below 2**63 -> 20, a float -> 24 (repr), a str -> at most
# 12 bytes per character (\ud83d\ude00 for one emoji) + 2 quotes. Anything else is measured.
_SMALL = {type(None): 5, bool: 5, float: 24}


def _json_bound(value):
    """An upper bound of len(json.dumps(value)) when it is cheap to know, else None."""
    kind = type(value)
    bound = _SMALL.get(kind)
    if bound is not None:
        return bound
    if kind is int and -(2**63) < value < 2**63:
        return 20
    if kind is str:
        return 12 * len(value) + 2
    return None


def _check_size(value, max_payload):
    """A return value over MAX_PAYLOAD fails the task instead of bloating the server."""
    if max_payload is None:
        return
    bound = _json_bound(value)
    if bound is not None and bound <= max_payload:
        return  # cannot be over: no json.dumps of every return value
    size = len(json.dumps(value))
    if size > max_payload:
        raise PayloadTooLarge(
            f"the return value takes {size} bytes as JSON, over MAX_PAYLOAD={max_payload}; "
            f"store large results elsewhere (a file, the database) and return a reference")


def _normalize(raw):
    """normalize_json(raw), without the call for the JSON scalars it returns unchanged."""
    return raw if type(raw) in _SCALARS else normalize_json(raw)


_SCALARS = frozenset({type(None), bool, int, float, str})


# Per task thread: did the check after its last task find no database connection at all?
_thread = threading.local()


def _close_old_connections():
    """django.db.close_old_connections() (the same two lines), noting for the next task whether
    this thread holds any database connection at all."""
    _thread.no_connection = False  # if a check raises, the next task checks again
    initialized = connections.all(initialized_only=True)
    for conn in initialized:
        conn.close_if_unusable_or_obsolete()
    _thread.no_connection = not initialized


# Task.call, when it is Django's own function (its code in django/tasks/base.py: a project's
# instrumentation that wrapped it before we were imported has other code); see _call.
_TASK_CALL = Task.__dict__["call"]
if _TASK_CALL.__code__.co_filename != inspect.getfile(django.tasks.base):
    _TASK_CALL = None
_is_coroutine_function: dict = {}  # task function -> bool (inspect's check, once per function)


def _call(task, result):
    """Task.call(...). When the task's call is Django's own and the function is not a coroutine,
    it would only call the function: that is done here directly, without Task.call's inspect
    check of every call. Wrapped (after our import), overridden or async: Task.call itself."""
    args = (TaskContext(task_result=result), *result.args) if task.takes_context else result.args
    func = task.func
    if type(task).call is _TASK_CALL:
        is_async = _is_coroutine_function.get(func)
        if is_async is None:
            is_async = _is_coroutine_function[func] = inspect.iscoroutinefunction(func)
        if not is_async:
            return func(*args, **result.kwargs)
    return task.call(*args, **result.kwargs)


def execute(record, sender, max_payload=None, client=None):
    """Run the task of `record`; returns the outcome dict. `sender` is the backend class;
    `client` (the worker's) carries set_progress calls."""
    try:
        result = to_task_result(record)
    except Exception as exc:  # unimportable task: it fails, the worker lives on
        return {"id": record["id"], "status": FAILED, "finished_at": time.time(),
                "errors": [_error(exc)]}
    task_id = result.id
    token = current_result_id.set(task_id)
    flow_token = workflow.entered(record)  # dependency_results() (after())
    # The Reporter is made on the first set_progress: most tasks never report progress.
    run = Run(client, task_id, record.get("metadata")) if client else None
    progress_token = _reporter.set(run)
    # As a request would, before and after: no stale DB connection between tasks. The check
    # before is skipped when the one after this thread's last task found no connection at all:
    # since then the thread only claimed and resolved this task, so nothing can have gone stale
    # (only a task module that queries at import, which Django warns against, opens one here).
    if not getattr(_thread, "no_connection", False):
        close_old_connections()
    try:
        task_started.send(sender=sender, task_result=result)
        try:
            value = _normalize(_call(result.task, result))
            _check_size(value, max_payload)
        except BaseException as exc:  # KeyboardInterrupt and SystemExit too: the task ends
            # FAILED with it and the thread lives on. (Django's ImmediateBackend re-raises
            # KeyboardInterrupt to let a user at the terminal stop; a worker ignores SIGINT, so
            # here only the task itself can have raised it.)
            outcome = {"id": task_id, "status": FAILED, "finished_at": time.time(),
                       "errors": [_error(exc)]}
            policy = record.get("retry")
            error = outcome["errors"][0]
            attempt = _attempt_text(result.attempts, policy)
            if wants_retry(policy, exc, result.attempts):
                outcome["retry"] = True  # not the end: task_finished waits for the last attempt
                logger.warning("task %s (%s) %s failed; it will be retried:\n%s", task_id,
                               record["task"], attempt, error["traceback"].rstrip())
            else:
                logger.error("task %s (%s) failed, %s:\n%s", task_id, record["task"], attempt,
                             error["traceback"].rstrip())
                _set(result, TaskResultStatus.FAILED, outcome["finished_at"])
                result.errors.append(TaskError(**outcome["errors"][0]))
                task_finished.send(sender=sender, task_result=result)
        else:
            finished_at = time.time()
            outcome = {"id": task_id, "status": SUCCESSFUL, "finished_at": finished_at,
                       "return_value": value}
            _set(result, TaskResultStatus.SUCCESSFUL, finished_at)
            object.__setattr__(result, "_return_value", value)
            task_finished.send(sender=sender, task_result=result)
        held = run.take_pending() if run is not None else None  # no flush after this
        if held:
            outcome["metadata"] = held
        return outcome
    finally:
        _close_old_connections()
        _reporter.reset(progress_token)
        workflow.left(flow_token)
        current_result_id.reset(token)


def _attempt_text(attempt, policy):
    """"attempt 2 of 3" with a retry policy, "attempt 1" without one."""
    return f"attempt {attempt} of {policy['max_attempts']}" if policy else f"attempt {attempt}"


def sender_for(task_backends, alias, kind=None):
    """The backend class the signals name as their sender: TASKS[alias]'s; for a backend built
    directly (its alias is not in TASKS), ours of the spec's kind."""
    from django.conf import settings

    if alias in (getattr(settings, "TASKS", None) or {}):
        return type(task_backends[alias])
    from ..client.backend import ProcessPoolBackend, SharedBackend, ThreadPoolBackend

    return {"process": ProcessPoolBackend, "thread": ThreadPoolBackend}.get(kind, SharedBackend)


def _set(result, status, finished_at):
    object.__setattr__(result, "status", status)
    object.__setattr__(result, "finished_at", to_datetime(finished_at))
