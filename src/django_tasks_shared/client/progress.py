"""`progress(result)`: a task's progress (its set_progress() fields), from any process.

    progress(result) -> one `metadata` round trip -> the dict
    (set in the task by set_progress(): worker/progress.py)
"""

from django.tasks.exceptions import TaskResultDoesNotExist

from .backend import SharedBackend


def progress(result):
    """The metadata (progress) of a TaskResult, fresh from the server, from any process.

    On another backend that implements Django's coming metadata API, the refreshed
    `result.metadata`; otherwise NotImplementedError.
    """
    from django.tasks import task_backends

    backend = task_backends[result.backend]
    if isinstance(backend, SharedBackend):
        answer = backend.call("metadata", result.id)
        if answer is None:
            raise TaskResultDoesNotExist(result.id)
        return answer[1]
    if getattr(backend, "supports_metadata", False):
        result.refresh()
        return dict(result.metadata)
    raise NotImplementedError(
        f"task backend {result.backend!r} ({type(backend).__name__}) keeps no progress: "
        "progress() needs django-tasks-shared or a backend with supports_metadata.")
