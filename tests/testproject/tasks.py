"""Tasks the tests enqueue. Each is small and says what it proves."""

import asyncio
import os
import time

from django.tasks import task

from django_tasks_shared import current_result_id


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
