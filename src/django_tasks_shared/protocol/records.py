"""The shapes that cross processes: a task's record, a worker's outcome, a recorded error.

    client  new_record(...) ── enqueue ──> server stores it (status, times, worker ids filled)
    worker  <── finish_and_claim ── the RUNNING record; runs it ──> Outcome ── next claim ──>
    client  <── get / wait / get_many ── the record ──> django.tasks.TaskResult (client/results)

Records are JSON-compatible dicts (the server never imports Django or user code); these
TypedDicts give their keys one spelling that mypy checks. Optional keys are added only when
there is a value: most records carry no retry policy and no progress, and every key costs at a
STATE_DIR restore.
"""

from typing import Any, NotRequired, TypedDict

from .status import READY


class ErrorDict(TypedDict):
    """One failed attempt, as Django's TaskError holds it."""
    exception_class_path: str
    traceback: str


class RetryPolicy(TypedDict):
    """A record's retry policy (see retry_policy.py): `on` holds class paths."""
    max_attempts: int
    delay: float
    factor: float
    max_delay: float
    on: list[str]


class UniqueSpec(TypedDict):
    """@unique: the key (task path + the user's key, or + normalised JSON arguments) and until
    when it is held ("finished": pending or running; "started": pending only)."""
    key: str
    until: str


class LimitSpec(TypedDict):
    """@limit: the key (task path [+ the user's key]) and its limits (protocol/workflows.py)."""
    key: str
    concurrency: int | None
    rate: list[float] | None        # [starts, per seconds], a sliding window


class Record(TypedDict):
    id: str
    task: str                       # the task's module path
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int
    queue: str
    run_after: float | None         # time.time() of the earliest start
    takes_context: bool
    backend: str                    # the TASKS alias
    status: str                     # protocol.status: READY, RUNNING, SUCCESSFUL, FAILED
    enqueued_at: float | None
    started_at: float | None
    last_attempted_at: float | None
    finished_at: float | None
    return_value: Any
    errors: list[ErrorDict]
    worker_ids: list[str]
    seq: NotRequired[int]           # FIFO position in the queue (server side)
    retry: NotRequired[RetryPolicy]
    metadata: NotRequired[dict[str, Any]]  # set_progress() fields (Django's raw_metadata shape)
    # Workflows (v0.3, store/workflows.py): absent on most records, and on every 0.1/0.2 record.
    unique: NotRequired[UniqueSpec]
    limit: NotRequired[LimitSpec]
    after: NotRequired[list[str]]   # ids of the tasks it waits for (all must succeed)
    # Only on the copy a worker claims (never stored): the return values of `after`, in order.
    dependency_results: NotRequired[dict[str, Any]]
    # Prefetch (v0.3, store/reservations.py): [worker, thread, rseq] while reserved by a worker
    # (READY); None once started or given back (a journal entry). `rseq` only on the copy the
    # worker gets: its number in the worker's start table (protocol/starts.py).
    reserved: NotRequired[list | None]
    rseq: NotRequired[int]
    hold: NotRequired[int]          # a batch's first task: the start table entry of its outcome


class Outcome(TypedDict):
    """What a worker reports for the task it ran, with its next claim."""
    id: str
    status: str                     # SUCCESSFUL or FAILED
    finished_at: float | None
    return_value: NotRequired[Any]
    errors: NotRequired[list[ErrorDict]]
    retry: NotRequired[bool]        # the failed attempt gets another try (policy matched)
    metadata: NotRequired[dict[str, Any]]  # progress still held back when the task ended
    attempt: NotRequired[int]       # len(worker_ids) of the record run: one report per attempt
    # A task that was reserved (prefetch): its reservation and its real start (time.time())
    rseq: NotRequired[int]
    started_at: NotRequired[float]


def new_record(
    *, id: str, task: str, args: list[Any], kwargs: dict[str, Any], priority: int = 0,
    queue: str = "default", run_after: float | None = None, takes_context: bool = False,
    backend: str = "default", retry: RetryPolicy | None = None,
) -> Record:
    """The record a client sends to `enqueue`."""
    record: Record = {
        "id": id, "task": task, "args": args, "kwargs": kwargs, "priority": priority,
        "queue": queue, "run_after": run_after, "takes_context": takes_context,
        "backend": backend, "status": READY, "enqueued_at": None, "started_at": None,
        "last_attempted_at": None, "finished_at": None, "return_value": None,
        "errors": [], "worker_ids": [],
    }
    if retry is not None:
        record["retry"] = retry
    return record
