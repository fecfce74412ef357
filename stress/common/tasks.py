"""Tasks of the benchmark, the demo, the storm's probe and the profilers.

Django resolves a task by its function's module path, so the `@task` functions keep their own
names; the raw ProcessPoolExecutor pickles plain functions by name, so it gets `raw_*` twins
that do the same work.
"""

import os
import time

from django.tasks import task


def _burn(n):
    """Fixed CPU work (n loop iterations); reports the CPU it really took in this thread."""
    cpu = time.thread_time()
    x = 0
    for i in range(n):
        x += i * i
    return {"cpu": time.thread_time() - cpu, "pid": os.getpid()}


@task
def noop():
    return None


@task
def burn(n):
    return _burn(n)


@task
def square(i, origin):
    return {"i": i, "square": i * i, "origin": origin, "worker_pid": os.getpid()}


def raw_noop():
    return None


def raw_burn(n):
    return _burn(n)


def calibrate_burn(target=0.050):
    """Iterations of `burn` that take about `target` seconds of CPU here."""
    n = 20_000
    while True:
        took = _burn(n)["cpu"]
        if took > 0.02:
            return max(1, int(n * target / took))
        n *= 2
