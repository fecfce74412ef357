"""`@unique`, `@limit` and `after()`: what a task's record carries so the server can keep them.

    @task / @unique(key, until) / @limit(concurrency, rate, key) / def f(...)
        marks f (returned unchanged, still callable) with its workflow spec
    after(results, task, *args, **kwargs)  -> task.enqueue(*args, **kwargs) with the parents'
        ids held in a context variable for the call
    SharedBackend.enqueue -> fields(task, args, kwargs): the record's "unique" / "limit" /
        "after" (keys computed HERE: the server never imports the task) -> the server's
        `enqueue_workflow` (store/workflows.py), which returns the record that stands for the
        call: the new one, or the task holding the unique key (same id)

On a backend that is not ours, Django calls that backend directly: nothing would consult the
marks, and the task would silently run without them. So the first mark installs a guard on
`Task.enqueue` / `Task.aenqueue` (one getattr per enqueue) that raises NotImplementedError
naming the backend, before that backend stores anything; `after()` checks its backend itself.
"""

import contextvars
import functools
from typing import Any

from django.tasks.base import Task, TaskResult
from django.tasks.exceptions import TaskResultDoesNotExist

from ..exceptions import UnknownDependency
from ..protocol.workflows import UNTIL, arguments_key, parse_rate, scoped

ATTRIBUTE = "django_tasks_shared_workflow"  # set on the task function by @unique / @limit
_after: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "django_tasks_shared_after", default=None)


def _mark(func, name, spec, decorator):
    target = getattr(func, "func", None) if hasattr(func, "module_path") else func
    if target is None or not callable(target):
        raise TypeError(f"@{decorator} decorates a task function, got {func!r}.")
    marks = dict(getattr(target, ATTRIBUTE, None) or {})
    marks[name] = spec
    setattr(target, ATTRIBUTE, marks)  # a Task (decorator above @task): mark its function
    _install_guard()
    return func


def unique(key=None, until="finished"):
    """Enqueue at most one task per key: while one is pending (or, with until="finished", the
    default, running too), `enqueue()` returns THAT task's result (same id) and stores nothing.

    `key`: None (the task path + its arguments as normalised JSON) or a callable taking the
    task's arguments and returning a str or int (scoped to the task path). The key is free the
    moment its holder ends, in any way; retries keep it.
    """
    if key is not None and not callable(key):
        raise TypeError(f"@unique(key=...) takes a callable of the task's arguments, got "
                        f"{key!r}.")
    if until not in UNTIL:
        raise ValueError(f"@unique(until=...) must be 'finished' or 'started', got {until!r}.")
    return functools.partial(_mark, name="unique", spec={"key": key, "until": until},
                             decorator="unique")


def limit(concurrency=None, rate=None, key=None):
    """At most `concurrency` tasks of this task (per key) RUNNING at once over all workers,
    and/or at most `rate` starts ("10/s", "30/m", "100/h": a sliding window) per key.

    `key`: None (one limit for the task) or a callable taking the task's arguments and
    returning a str or int (one limit per value). Tasks over a limit stay READY, in order, and
    never delay other tasks. A running task holds its slot until it ends in any way.
    """
    if concurrency is not None and (isinstance(concurrency, bool) or
                                    not isinstance(concurrency, int) or concurrency < 1):
        raise ValueError(f"@limit(concurrency=...) must be a whole number >= 1, got "
                         f"{concurrency!r}.")
    parsed = parse_rate(rate) if rate is not None else None
    if concurrency is None and parsed is None:
        raise ValueError("@limit needs concurrency=N, rate='N/s|m|h', or both.")
    if key is not None and not callable(key):
        raise TypeError(f"@limit(key=...) takes a callable of the task's arguments, got {key!r}.")
    return functools.partial(_mark, name="limit",
                             spec={"key": key, "concurrency": concurrency, "rate": parsed},
                             decorator="limit")


def _user_key(task, kind, function, args, kwargs):
    try:
        value = function(*args, **kwargs)
    except Exception as exc:
        raise TypeError(f"the @{kind} key of task {task.module_path!r} raised "
                        f"{type(exc).__name__}: {exc}; nothing was enqueued.") from exc
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"the @{kind} key of task {task.module_path!r} must return a str or an "
                        f"int, got {value!r}; nothing was enqueued.")
    return str(value)


def fields(task, args, kwargs) -> dict[str, Any] | None:
    """The record's workflow fields for this enqueue, or None (a plain task: the usual path).
    `args` and `kwargs` are the JSON-normalised ones the worker will see."""
    marks = getattr(task.func, ATTRIBUTE, None)
    parents = _after.get()
    if marks is None and parents is None:
        return None
    if parents is not None:
        _after.set(None)  # this call's: not a task that a signal receiver enqueues meanwhile
    out: dict[str, Any] = {}
    spec = (marks or {}).get("unique")
    if spec is not None:
        key = (arguments_key(args, kwargs) if spec["key"] is None
               else _user_key(task, "unique", spec["key"], args, kwargs))
        out["unique"] = {"key": scoped(task.module_path, key), "until": spec["until"]}
    spec = (marks or {}).get("limit")
    if spec is not None:
        key = (task.module_path if spec["key"] is None  # one limit for the task
               else scoped(task.module_path, _user_key(task, "limit", spec["key"], args, kwargs)))
        out["limit"] = {"key": key,
                        "concurrency": spec["concurrency"], "rate": spec["rate"]}
    if parents is not None:
        out["after"] = list(parents)
    return out


def enqueue_record(backend, record):
    """The server's enqueue_workflow: the record that stands for this call."""
    try:
        return backend.call("enqueue_workflow", record)
    except UnknownDependency as exc:
        raise TaskResultDoesNotExist(exc.task_id) from None
    except AttributeError as exc:
        if "not exposed" not in str(exc):
            raise
        raise NotImplementedError(
            f"the task server at {backend.config.address_text} runs an older release that "
            f"cannot keep @unique, @limit or after(); nothing was enqueued. Restart "
            f"`tasks_server` on this release (tasks_reload only replaces the workers).") from None


def after(results, task, *args, **kwargs):
    """Enqueue `task(*args, **kwargs)` now, to run once every result in `results` (a
    TaskResult, or several) has SUCCEEDED. If one fails or is cancelled, the task ends FAILED
    with `exceptions.DependencyFailed` naming it, without running (and so do its own
    dependents). Returns the task's TaskResult. An unknown or evicted result raises
    TaskResultDoesNotExist and stores nothing. Inside the task, `dependency_results()` gives
    their return values. Chains: after([a], b); a group with a callback: after(group, cb).
    """
    from django.tasks import task_backends

    from .backend import SharedBackend

    if isinstance(results, TaskResult):
        results = [results]
    results = list(results)
    if not isinstance(task, Task):
        raise TypeError(f"after() takes a Task (a function decorated with @task), got {task!r}.")
    backend = task.get_backend()
    if not isinstance(backend, SharedBackend):
        raise NotImplementedError(_elsewhere("after()", task, backend))
    ids = []
    for result in results:
        if not isinstance(result, TaskResult):
            raise TypeError(f"after() waits for TaskResults, got {result!r}.")
        if result.backend != task.backend:
            raise ValueError(
                f"after(): result {result.id} belongs to backend {result.backend!r}, the task "
                f"{task.module_path!r} to {task.backend!r}; dependencies live in one server.")
        if not isinstance(task_backends[result.backend], SharedBackend):
            raise NotImplementedError(_elsewhere("after()", task, task_backends[result.backend]))
        ids.append(result.id)
    token = _after.set(ids)
    try:
        return task.enqueue(*args, **kwargs)
    finally:
        _after.reset(token)


def _elsewhere(what, task, backend):
    kind = f"{type(backend).__module__}.{type(backend).__qualname__}"
    return (f"{what} of task {task.module_path!r} needs a django-tasks-shared backend; "
            f"TASKS[{task.backend!r}] is {kind}, which would run it without it. Nothing was "
            f"enqueued. Remove the decorator there, or use django_tasks_shared's "
            f"ProcessPoolBackend / ThreadPoolBackend (docs/workflows.md, 'On another backend').")


_guarded = False


def _install_guard():
    """Wrap Task.enqueue / aenqueue once: a marked task on another backend raises before that
    backend stores anything (see the module docstring for why)."""
    global _guarded
    if _guarded:
        return
    _guarded = True
    enqueue: Any = Task.enqueue
    aenqueue: Any = Task.aenqueue

    def check(task):
        marks = getattr(task.func, ATTRIBUTE, None)
        if marks is not None:
            from .backend import SharedBackend

            backend = task.get_backend()
            if not isinstance(backend, SharedBackend):
                what = " and ".join(f"@{name}" for name in marks)
                raise NotImplementedError(_elsewhere(what, task, backend))

    @functools.wraps(enqueue)
    def guarded_enqueue(self, *args, **kwargs):
        check(self)
        return enqueue(self, *args, **kwargs)

    @functools.wraps(aenqueue)
    async def guarded_aenqueue(self, *args, **kwargs):
        check(self)
        return await aenqueue(self, *args, **kwargs)

    Task.enqueue = guarded_enqueue  # type: ignore[method-assign]
    Task.aenqueue = guarded_aenqueue  # type: ignore[method-assign]


__all__ = ["after", "limit", "unique"]
