"""The persisted constants of protocol/: records, journals and retry policies hold these strings,
so a class moved or renamed must not silently change them (each is derived from its class)."""

import pytest

from django_tasks_shared import exceptions
from django_tasks_shared.protocol import methods, status
from django_tasks_shared.protocol.retry_policy import NEVER, SUPERVISOR_ENDED


@pytest.mark.timeout(10)
def test_class_paths_are_pinned_and_import_to_their_classes():
    from django.utils.module_loading import import_string

    pinned = {
        status.WORKER_LOST: "django_tasks_shared.exceptions.WorkerLost",
        status.TIME_LIMIT_EXCEEDED: "django_tasks_shared.exceptions.TimeLimitExceeded",
        status.MEMORY_LIMIT_EXCEEDED: "django_tasks_shared.exceptions.MemoryLimitExceeded",
        status.TASK_CANCELLED: "django_tasks_shared.exceptions.TaskCancelled",
        status.PAYLOAD_TOO_LARGE: "django_tasks_shared.exceptions.PayloadTooLarge",
        status.DEPENDENCY_FAILED: "django_tasks_shared.exceptions.DependencyFailed",
    }
    for derived, literal in pinned.items():
        assert derived == literal
        assert import_string(literal).__module__ == exceptions.__name__
    assert set(SUPERVISOR_ENDED) == {status.WORKER_LOST, status.TIME_LIMIT_EXCEEDED,
                                     status.MEMORY_LIMIT_EXCEEDED}
    assert set(NEVER) == {status.TASK_CANCELLED, status.PAYLOAD_TOO_LARGE}
    assert set(status.END_COUNTERS) == set(pinned) - {status.PAYLOAD_TOO_LARGE,
                                                      status.DEPENDENCY_FAILED}


@pytest.mark.timeout(10)
def test_statuses_and_wire_names_are_pinned():
    assert (status.READY, status.RUNNING, status.FAILED, status.SUCCESSFUL, status.STOP) == (
        "READY", "RUNNING", "FAILED", "SUCCESSFUL", "STOP")
    # 0.1.0 exposed exactly these: a worker or client of this release may rely on them
    assert set(methods.EXPOSED) >= {
        "enqueue", "get", "get_many", "wait", "finish_and_claim", "worker_failed", "ping",
        "health", "reload", "save_metadata", "metadata", "cancel", "results", "overview"}
    assert methods.STORE_IDENT == "store"
