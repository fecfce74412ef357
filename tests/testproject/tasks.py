"""Tasks the tests enqueue. Each is small and says what it proves."""

import asyncio
import os
import time

from django.tasks import task
from django.tasks.signals import task_finished, task_started

from django_tasks_shared import current_result_id, retry, set_progress


@task
def add(a, b):
    return a + b


@task
def whoami():
    return {"pid": os.getpid(), "result_id": current_result_id.get()}


@task(queue_name="emails")
def send_email(to):
    return f"sent to {to}"


@task(takes_context=True)
def with_context(context, x):
    return {"id": context.task_result.id, "attempt": context.attempt, "x": x}


@task
async def async_add(a, b):
    await asyncio.sleep(0.01)
    return a + b


@task
def db_connection_state():
    """Was a database connection open in this thread when the task started? Then it uses one."""
    from django.db import connection

    open_at_start = connection.connection is not None
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"open_at_start": open_at_start, "pid": os.getpid()}


@task
def fail(message):
    raise ValueError(message)


@task
def bad_return():
    return object()


@task
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@task
def record_order(path, label):
    with open(path, "a") as f:
        f.write(label + "\n")
    return label


@task
def die(code=7):
    os._exit(code)


@task
def hog(mib, hold=0.0):
    block = bytearray(mib * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(hold)
    return len(block)


@task
def spin(seconds):
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


@task
def ledger(path):
    """One line per run (time, result id): a schedule's runs, counted by a test."""
    with open(path, "a") as f:
        f.write(f"{time.time():.6f} {current_result_id.get()}\n")
    return path


# ---- retries -----------------------------------------------------------------------------------

def _signal_log(signal_name):
    """Append "<signal> <result id> <status>" to $TASKS_SIGNAL_LOG (set by a test): how often
    each fired. With $TASKS_SIGNAL_HOLD, task_finished first notes "<id> <pid>" in
    <hold>.entered, then waits (60 s at most) while the file <hold> exists: a receiver caught
    mid-delivery (test_end_notices.py)."""
    def receiver(sender, task_result, **kwargs):
        path = os.environ.get("TASKS_SIGNAL_LOG")
        if path:
            hold = os.environ.get("TASKS_SIGNAL_HOLD")
            if hold and signal_name == "task_finished" and os.path.exists(hold):
                with open(hold + ".entered", "a") as f:
                    f.write(f"{task_result.id} {os.getpid()}\n")
                deadline = time.monotonic() + 60
                while os.path.exists(hold) and time.monotonic() < deadline:
                    time.sleep(0.05)
            with open(path, "a") as f:
                f.write(f"{signal_name} {task_result.id} {task_result.status}\n")
    return receiver


_on_started, _on_finished = _signal_log("task_started"), _signal_log("task_finished")
task_started.connect(_on_started)
task_finished.connect(_on_finished)


def _attempt_line(path, attempt):
    """Append "<attempt> <time>" to `path`; returns how many lines (attempts) it now has."""
    with open(path, "a") as f:
        f.write(f"{attempt} {time.time()}\n")
    with open(path) as f:
        return len(f.readlines())


@task(takes_context=True)
@retry(max_attempts=3, delay=0.3, factor=2.0, on=(ConnectionError,))
def flaky(context, path, failures):
    """Raises ConnectionError on its first `failures` attempts, then returns the attempt number."""
    seen = _attempt_line(path, context.attempt)
    if seen <= failures:
        raise ConnectionError(f"attempt {context.attempt} of a flaky task fails")
    return context.attempt


@task
@retry(max_attempts=2, delay=0.1, on=("django_tasks_shared.exceptions.WorkerLost",))
def dies_once(path):
    """Its worker dies on the first attempt (WorkerLost, listed in `on`); the second succeeds."""
    if _attempt_line(path, 0) == 1:
        os._exit(9)
    return "survived"


@task(takes_context=True)
@retry(max_attempts=2, delay=2.0)
def flaky_slow(context, path):
    """Fails its first attempt, then waits 2 s in the queue: time to crash the server there."""
    _attempt_line(path, context.attempt)
    if context.attempt == 1:
        raise ConnectionError("the first attempt fails")
    return context.attempt


@task(takes_context=True)
@retry(max_attempts=2, delay=0.1, on=("django_tasks_shared.exceptions.WorkerLost",))
def slow_first(context, path):
    """Its first attempt runs for 30 s (time to crash the server under it); the second returns."""
    _attempt_line(path, context.attempt)
    if context.attempt == 1:
        time.sleep(30)
    return context.attempt


@task
@retry(max_attempts=1)
def fail_once_only(message):
    """OPTIONS["RETRY"] of the backend would retry it; its own @retry says one attempt."""
    raise ValueError(message)


# ---- progress ----------------------------------------------------------------------------------

@task
def crunch(slow_steps, pause, fast_steps):
    """Reports progress on every step: slowly first (readable while it runs), then as fast as it
    can (coalesced); returns how long the fast part took and how many round trips it made."""
    for i in range(slow_steps):
        set_progress(done=i + 1, total=slow_steps + fast_steps, phase="slow")
        time.sleep(pause)
    from django_tasks_shared.worker.progress import _reporter

    sends = _reporter.get().sends
    started = time.perf_counter()
    for i in range(fast_steps):
        set_progress(done=slow_steps + i + 1, phase="fast")
    return {"seconds": time.perf_counter() - started, "sends": _reporter.get().sends - sends}


@task
def progress_then_pause(pause):
    """Two calls within 0.1 s, then a long pause: the second must not wait for the task's end."""
    set_progress(step=1)
    set_progress(step=2)
    time.sleep(pause)
    return "done"


@task
def progress_errors():
    """Bad set_progress calls: each must raise and store nothing."""
    set_progress(ok=1)
    errors = {}
    for name, fields in (("not_json", {"x": object()}), ("reserved", {"_private": 1}),
                         ("too_big", {"blob": "x" * 70_000})):
        try:
            set_progress(**fields)
        except (TypeError, ValueError) as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
    return errors


# ---- memory ------------------------------------------------------------------------------------

@task
def grow(step_mib, every, steps, path):
    """Allocates (and touches) `step_mib` MiB every `every` seconds, appending the total to `path`
    after each step: how far it got before the kill."""
    blocks = []
    for i in range(steps):
        blocks.append(bytearray(b"\x01") * (step_mib * 1024 * 1024))
        with open(path, "a") as f:
            f.write(f"{(i + 1) * step_mib}\n")
        time.sleep(every)
    return len(blocks) * step_mib


@task
def grow_in_child(mib, path):
    """Starts a child process that allocates `mib` MiB and sleeps; writes the child's pid to
    `path`. The memory is the child's, not the worker's: the cap must count it."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", f"import time; b = bytearray(b'1') * "
                              f"({mib} * 1024 * 1024); time.sleep(60)"])
    with open(path, "w") as f:
        f.write(str(child.pid))
    child.wait()
    return "child exited"


# ---- the contract with Django (tests/test_contract.py, tests/test_end_notices.py) --------------

@task
def interrupt():
    """Raises KeyboardInterrupt (a BaseException) in the worker thread that runs it."""
    raise KeyboardInterrupt("the task interrupts itself")


@task
def exit_task():
    """Calls sys.exit() (SystemExit, a BaseException) in the worker thread that runs it."""
    import sys

    sys.exit(3)


@task
def sleep_span(seconds):
    """Sleeps; returns when it ran (time.time() at start and end) and in which pid."""
    start = time.time()
    time.sleep(seconds)
    return {"start": start, "end": time.time(), "pid": os.getpid()}


@task(takes_context=True)
@retry(max_attempts=2, delay=0.1, on=(ConnectionError,))
def slow_flaky(context, seconds):
    """Each attempt runs `seconds`; the first then fails (retried), the second returns its
    attempt number: with TIME_LIMIT between one attempt and two, only a per-attempt limit
    lets it succeed."""
    time.sleep(seconds)
    if context.attempt == 1:
        raise ConnectionError("the first attempt fails after a while")
    return context.attempt
