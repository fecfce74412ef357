"""The tasks of the monitor run (python -m stress.contract monitor): one per way a task ends."""

import os
import time

from django.tasks import task


@task
def add(a, b):
    return a + b


@task
def fail(message):
    raise ValueError(message)


@task
def die():
    os._exit(7)


@task
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@task
def grow(step_mib, steps):
    blocks = []
    for _ in range(steps):
        blocks.append(bytearray(b"\x01") * (step_mib * 1024 * 1024))
        time.sleep(0.05)
    return len(blocks)
