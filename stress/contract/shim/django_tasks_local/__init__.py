"""A stand-in for the django-tasks-local package, so that its own test suite, unmodified, runs
against django-tasks-shared's backends (python -m stress.contract local)."""

from django_tasks_shared import ProcessPoolBackend, ThreadPoolBackend, current_result_id

__all__ = ["ProcessPoolBackend", "ThreadPoolBackend", "current_result_id"]
