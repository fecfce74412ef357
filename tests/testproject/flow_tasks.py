"""Tasks the workflow tests enqueue (@unique, @limit, after()). A module of its own: the 0.1.0
server of tests/test_mixed_versions.py imports tasks.py (through urls.py), and these names do
not exist there."""

import os
import time

from django.tasks import task

from django_tasks_shared import current_result_id, dependency_results, limit, unique


def _interval(path, seconds):
    """Sleep `seconds` between a "start" and an "end" line (time, result id) in `path`."""
    if path:
        with open(path, "a") as f:
            f.write(f"start {time.time():.6f} {current_result_id.get()}\n")
    time.sleep(seconds)
    if path:
        with open(path, "a") as f:
            f.write(f"end {time.time():.6f} {current_result_id.get()}\n")
    return os.getpid()


@task
@unique(key=lambda name, *args, **kwargs: name)
def unique_job(name, seconds=0.0, path=None):
    """At most one pending or running per `name`."""
    return _interval(path, seconds)


@task
@unique(until="started")
def unique_until_started(name, seconds=0.0):
    return _interval(None, seconds)


@task
@limit(concurrency=2)
def limited(seconds, path=None):
    """At most 2 running at once, over all workers."""
    return _interval(path, seconds)


@task
@limit(rate="4/s", key=lambda shop, *args, **kwargs: shop)
def rated(shop, path=None):
    """At most 4 starts per second per shop."""
    return _interval(path, 0.0)


@task(queue_name="emails")
def slow_email(seconds):
    time.sleep(seconds)
    return os.getpid()


@task
def merge(label):
    """Reads the results of the tasks it was enqueued after()."""
    return {"label": label, "parents": list(dependency_results().items())}
