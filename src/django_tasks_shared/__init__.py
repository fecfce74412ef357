"""django-tasks-shared: a Django 6 Tasks backend with one shared, in-memory queue and result store.

The backends import Django; the server process imports only store/server/supervisor, so the
public names here are loaded lazily.
"""

__version__ = "0.1.0"

__all__ = ["ProcessPoolBackend", "ThreadPoolBackend", "cancel", "current_result_id", "progress",
           "retry", "set_progress", "wait", "wait_all"]


def __getattr__(name):
    if name in ("ProcessPoolBackend", "ThreadPoolBackend", "cancel", "wait", "wait_all"):
        from . import backend

        return getattr(backend, name)
    if name == "retry":
        from .retries import retry

        return retry
    if name in ("set_progress", "progress"):
        from . import metadata

        return getattr(metadata, name)
    if name == "current_result_id":
        from .execution import current_result_id

        return current_result_id
    raise AttributeError(f"module 'django_tasks_shared' has no attribute {name!r}")
