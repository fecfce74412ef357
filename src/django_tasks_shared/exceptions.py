"""Exceptions raised by django-tasks-shared.

`ServerUnavailable` (and its `StorageUnavailable`), `QueueFull` and `PayloadTooLarge` reach
callers of the backend.
`WorkerLost`, `TimeLimitExceeded`, `MemoryLimitExceeded` (and `PayloadTooLarge` for a return
value) are never raised in user code: the supervisor or the worker records their class paths in
`TaskError.exception_class_path` when it ends a task, so `result.errors[0].exception_class`
resolves to them. This module imports nothing from Django so that the server process stays light.
"""


class SharedTasksError(Exception):
    """Base class of this package's exceptions."""


class ServerUnavailable(SharedTasksError):
    """The task server cannot be reached (not running, unreachable, or stalled).

    `maybe_applied` is true when the request went out and no answer came back: the server may
    have done it. For an enqueue, `task_id` is the id of the task (then it may be queued: look
    with `task.get_result(exc.task_id)` rather than enqueuing it again)."""

    task_id: str | None = None
    maybe_applied: bool = False


class ServerAuthenticationError(ServerUnavailable):
    """The server answered but rejected our authkey (or we rejected its)."""


class StorageUnavailable(ServerUnavailable):
    """The task server cannot write its STATE_DIR (a full disk, a quota, an I/O error, a
    read-only file system, a state file being rewritten): the change was refused and nothing
    was stored. Reads go on; the server resumes by itself once it can write again."""


class QueueFull(SharedTasksError):
    """The server holds MAX_QUEUE pending tasks already; nothing was stored."""


class WorkerLost(SharedTasksError):
    """The worker process running the task died (signal, os._exit, OOM killer, drain timeout)."""


class TimeLimitExceeded(SharedTasksError):
    """The task ran longer than the backend's TIME_LIMIT and its worker was killed."""


class MemoryLimitExceeded(SharedTasksError):
    """The worker running the task passed MAX_TASK_MEMORY (RSS with its children) and was
    killed; the error text names the RSS seen and the limit."""


class TaskCancelled(SharedTasksError):
    """The task was cancelled (`django_tasks_shared.cancel`): a pending one never ran, a running
    one had its worker process stopped."""


class PayloadTooLarge(SharedTasksError):
    """Arguments (at enqueue) or a return value (at the end of a task) over MAX_PAYLOAD."""


class ServerStalled(ServerUnavailable):
    """The task server accepts connections but answers nothing within CONNECT_TIMEOUT, also on
    new connections for as long as the call may be retried (a stopped, swapping or overloaded
    server): an idempotent call was retried for up to 3 x CONNECT_TIMEOUT in all."""


class DependencyFailed(SharedTasksError):
    """A task enqueued with `after(...)` did not run: one of the tasks it waited for ended
    FAILED (or was cancelled); the error text names that task's id. Its own dependents end the
    same way."""


class UnknownDependency(SharedTasksError, LookupError):
    """`after(...)` named a result the server does not hold (unknown, evicted or expired);
    nothing was stored. The client raises Django's TaskResultDoesNotExist for it."""

    def __init__(self, task_id, message=None):
        super().__init__(message or f"no task result {task_id}: unknown, evicted or expired")
        self.task_id = task_id

    def __reduce__(self):  # crosses the wire pickled: keep the id
        return (type(self), (self.task_id, str(self)))
