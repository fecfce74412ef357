"""django-tasks-shared: a Django 6 Tasks backend with one shared queue and result store, served
by one server process to every process of a deployment.

The layout follows the processes (docs/architecture.md has the map): protocol/ (shared by all),
client/ (every Django process), server/ + store/ + durable/ + supervision/ (the server process),
worker/ (the worker processes), schedules/, health/, web/, management/. The public names below
are loaded lazily, so that the server process, which imports none of them, stays light.
"""

__version__ = "0.2.0.dev0"

_PUBLIC = {
    "ProcessPoolBackend": "client.backend", "ThreadPoolBackend": "client.backend",
    "cancel": "client.waiting", "wait": "client.waiting", "wait_all": "client.waiting",
    "retry": "client.retry", "progress": "client.progress",
    "set_progress": "worker.progress", "current_result_id": "worker.execution",
    "unique": "client.workflows", "limit": "client.workflows", "after": "client.workflows",
    "dependency_results": "worker.workflow",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'django_tasks_shared' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
