"""`dependency_results()`: inside a task enqueued with `after(...)`, its parents' return values.

    server  TaskStore._start: the claimed copy of a dependent's record gets
            "dependency_results" = {parent id: return value}, in the order given to after()
            (the parents' results are pinned until the dependent ends: store/dependencies.py)
    worker  execution.execute() -> entered(record) sets this thread's context variable for the
            run -> the task calls dependency_results() (no round trip)
"""

from contextvars import ContextVar
from typing import Any

_results: ContextVar[dict[str, Any] | None] = ContextVar("django_tasks_shared_dependencies",
                                                         default=None)


def dependency_results() -> dict[str, Any]:
    """{parent result id: its return value}, in the order the results were given to after(),
    for the task running in this thread (a copy). {} in a task enqueued without after().
    RuntimeError outside a task run by a django-tasks-shared worker."""
    from .execution import current_result_id

    if current_result_id.get(None) is None:
        raise RuntimeError("dependency_results() reads the results of the tasks that the "
                           "current task waited for (after()): call it inside a task run by "
                           "a django-tasks-shared worker.")
    return dict(_results.get() or {})


def entered(record):
    """Set for the run of `record`; returns the token to reset."""
    return _results.set(record.get("dependency_results"))


def left(token):
    _results.reset(token)
