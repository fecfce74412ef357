"""The workload of the stress harness.

Every task first appends one line "<result_id> <pid> <server_pid> <workload>" to a ledger file of
its own worker process (opened with O_APPEND, one os.write per line, so a line is never torn and
survives os._exit or SIGKILL right after). The harness counts executions from these files, not
from the store's word: an id seen twice ran twice.
"""

import os
import time

from django.tasks import task

from django_tasks_shared import current_result_id, retry

_ledgers = {}   # directory -> fd, one per worker process
_hoard = []     # hog keeps its memory here, so the worker stays over MAX_WORKER_MEMORY


class StressFailure(Exception):
    """Raised by the `fail` workload; its class path must show up in the TaskError."""


def _ledger(directory, workload):
    pid = os.getpid()
    fd = _ledgers.get(directory)
    if fd is None:
        fd = _ledgers[directory] = os.open(
            os.path.join(directory, f"{pid}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, f"{current_result_id.get()} {pid} {os.getppid()} {workload}\n".encode())
    return pid


@task
def noop(ledger, n=0):
    return {"pid": _ledger(ledger, "noop"), "value": n}


@task
def cpu(ledger, n=20_000):
    pid = _ledger(ledger, "cpu")
    x = 0
    for i in range(n):
        x += i * i
    return {"pid": pid, "value": x}


@task
def sleep(ledger, seconds=0.05):
    pid = _ledger(ledger, "sleep")
    time.sleep(seconds)
    return {"pid": pid, "value": seconds}


@task
def fail(ledger, message="planned failure"):
    _ledger(ledger, "fail")
    raise StressFailure(message)


@task(takes_context=True)
@retry(max_attempts=3, delay=0.05, on=(StressFailure,))
def flaky(context, ledger):
    """Fails its first attempt with StressFailure; @retry runs it again (same id, one ledger line
    per attempt), and the second attempt succeeds."""
    pid = _ledger(ledger, "flaky")
    if context.attempt == 1:
        raise StressFailure("first attempt of a flaky task")
    return {"pid": pid, "value": context.attempt}


@task
def crash(ledger, code=17):
    _ledger(ledger, "crash")
    os._exit(code)


@task
def hang(ledger, seconds=3600.0):
    """Sleeps far past TIME_LIMIT: the supervisor must end it with TimeLimitExceeded."""
    pid = _ledger(ledger, "hang")
    time.sleep(seconds)
    return {"pid": pid, "value": "woke up"}


@task
def hog(ledger, limit_mib):
    """Grows this worker's RSS past MAX_WORKER_MEMORY and keeps it: the task succeeds and the
    supervisor must retire the worker after it (nothing fails)."""
    import psutil

    pid = _ledger(ledger, "hog")
    rss = psutil.Process().memory_info().rss
    need = max(limit_mib * 2**20 + 32 * 2**20 - rss, 16 * 2**20)
    _hoard.append(bytearray(b"\x01") * need)  # touched pages: really resident
    return {"pid": pid, "value": len(_hoard)}


# ---- workflows (flows.py): spans "start <id> <time> <kind> <key>" / "end <id> <time>" ------------

from django_tasks_shared import limit, unique  # noqa: E402

FLOW_CONCURRENCY = 2   # @limit(concurrency=...) of flow_limited
FLOW_RATE = (8, 1.0)   # @limit(rate="8/s") of flow_rated
_spans = {}            # directory -> fd, one per worker process


def _span(directory, kind, key, seconds):
    fd = _spans.get(directory)
    if fd is None:
        fd = _spans[directory] = os.open(os.path.join(directory, f"{os.getpid()}.spans"),
                                         os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    task_id = current_result_id.get()
    os.write(fd, f"start {task_id} {time.time():.6f} {kind} {key}\n".encode())
    time.sleep(seconds)
    os.write(fd, f"end {task_id} {time.time():.6f}\n".encode())
    return os.getpid()


@task
@unique(key=lambda flows, key, seconds: key)
def flow_unique(flows, key, seconds):
    """At most one pending or running per key (until="finished")."""
    return _span(flows, "unique", key, seconds)


@task
@limit(concurrency=FLOW_CONCURRENCY)
def flow_limited(flows, seconds):
    return _span(flows, "limited", "-", seconds)


@task
@limit(rate=f"{FLOW_RATE[0]}/s")
def flow_rated(flows):
    return _span(flows, "rated", "-", 0.0)


@task
def flow_step(flows, seconds, fail=False):
    """A parent or a dependent of after(); a failing parent must fail its dependents."""
    pid = _span(flows, "step", "-", seconds)
    if fail:
        raise StressFailure("a parent that fails")
    return pid
