"""Our backend with Django's ImmediateBackend's shape: enqueue() returns once the task has run
(in a real worker process of a real server), so that Django's own ImmediateBackend tests can be
pointed at it (python -m stress.contract django)."""

from django_tasks_shared import ProcessPoolBackend, wait


class SyncBackend(ProcessPoolBackend):
    def enqueue(self, task, args=None, kwargs=None):
        return wait(super().enqueue(task, args, kwargs), 60)
