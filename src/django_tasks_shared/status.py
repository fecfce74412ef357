"""Record statuses and the class paths the server records, shared by the store and its journal."""

READY, RUNNING, FAILED, SUCCESSFUL = "READY", "RUNNING", "FAILED", "SUCCESSFUL"
FINISHED = (FAILED, SUCCESSFUL)
# finish_and_claim returns this instead of a record: the worker thread must exit.
STOP = "STOP"
WORKER_LOST = "django_tasks_shared.exceptions.WorkerLost"
