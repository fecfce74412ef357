"""Tasks of the stall and kill tests (tests/test_stalls.py, tests/test_leftovers.py)."""

import os
import subprocess
import sys
import time

from django.tasks import task

from django_tasks_shared import current_result_id


@task
def ledger_after(path, seconds):
    """Sleeps, then appends "<result id> <pid>" to `path`: one line per run that finished."""
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{current_result_id.get()} {os.getpid()}\n")
    return seconds


STUBBORN = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if sys.argv[1] == "own-group":
    os.setpgid(0, 0)  # out of the worker's process group (still in its session)
with open(sys.argv[2], "w") as f:
    f.write(str(os.getpid()))
time.sleep(120)
"""


@task
def stubborn_child(path, own_group=False, then_mib=0, then_sleep=60.0):
    """Starts a child that ignores SIGTERM (in its own process group with `own_group`) and
    writes its pid to `path`; then allocates `then_mib` MiB and sleeps: a task for TIME_LIMIT,
    cancel and MAX_TASK_MEMORY to stop."""
    subprocess.Popen([sys.executable, "-c", STUBBORN, "own-group" if own_group else "same",
                      path])
    deadline = time.monotonic() + 10
    while not os.path.exists(path) or not open(path).read():
        if time.monotonic() > deadline:
            raise RuntimeError("the child did not start")
        time.sleep(0.01)
    block = bytearray(b"\x01") * (then_mib * 1024 * 1024)
    time.sleep(then_sleep)
    return len(block)

