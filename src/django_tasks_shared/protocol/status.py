"""Record statuses and the class paths the server records, shared by every process.

The class paths are persisted (records, journals, snapshots, retry policies' `on`), so each has
one home here, derived from the exception class itself; tests pin the derived strings so that a
moved class can never silently change what was stored.
"""

from .. import exceptions

READY, RUNNING, FAILED, SUCCESSFUL = "READY", "RUNNING", "FAILED", "SUCCESSFUL"
FINISHED = (FAILED, SUCCESSFUL)
PENDING = (READY,)
# finish_and_claim returns this instead of a record: the worker thread must exit.
STOP = "STOP"


def class_path(cls):
    """The dotted path Django's TaskError.exception_class_path holds for `cls`."""
    return f"{cls.__module__}.{cls.__qualname__}"


WORKER_LOST = class_path(exceptions.WorkerLost)
TIME_LIMIT_EXCEEDED = class_path(exceptions.TimeLimitExceeded)
MEMORY_LIMIT_EXCEEDED = class_path(exceptions.MemoryLimitExceeded)
TASK_CANCELLED = class_path(exceptions.TaskCancelled)
PAYLOAD_TOO_LARGE = class_path(exceptions.PayloadTooLarge)
DEPENDENCY_FAILED = class_path(exceptions.DependencyFailed)

# The counter the server bumps when it ends a task with one of these (see TaskStore.fail).
END_COUNTERS = {WORKER_LOST: "worker_lost", TIME_LIMIT_EXCEEDED: "timed_out",
                MEMORY_LIMIT_EXCEEDED: "memory_exceeded", TASK_CANCELLED: "cancelled"}
