"""Shared by the management commands (the leading underscore keeps it from being a command)."""

from django.core.management.base import CommandError
from django.tasks import task_backends

from django_tasks_shared.client.backend import SharedBackend


def shared_backend(alias):
    """The django-tasks-shared backend instance of TASKS[alias], or a CommandError saying why."""
    try:
        instance = task_backends[alias]
    except Exception as exc:
        raise CommandError(f"no usable task backend {alias!r}: {exc}")
    if not isinstance(instance, SharedBackend):
        raise CommandError(f"TASKS[{alias!r}] is {type(instance).__name__}, not a "
                           "django-tasks-shared backend.")
    return instance
