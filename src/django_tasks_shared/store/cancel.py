"""Cancelling a task (`django_tasks_shared.cancel`, the page's button).

    cancel(id) ── READY ───> FAILED TaskCancelled at once; it leaves the queue (queue.drop)
              │              reserved by a worker (prefetch): revoked in its start table, so
              │              its worker skips it; or it started already: RUNNING, as below
              └─ RUNNING ──> FAILED TaskCancelled at once (a late report of its worker is
                             ignored), the worker takes no new task (retiring), and a kill
                             request for the supervisor, whose thread is woken (on_kill):
                             Supervisor.end_task stops the worker; siblings end WorkerLost
    take_kills() <── the supervisor, at once when woken and on every tick

Exactly one outcome per task: the record changes under the store's lock, through the store's
own end_pending() / fail(), so a worker's report, a time limit or a second cancel that comes
later finds the task finished.
"""

from ..protocol.status import FINISHED, READY, TASK_CANCELLED


class Cancels:
    def __init__(self, store):
        self.store = store
        self.kills = []                 # (worker id, task id, text) for the supervisor
        self.on_kill = None             # set by the supervisor: wakes its thread

    def cancel(self, task_id):
        """End a pending or running task FAILED with TaskCancelled. False if it is finished or
        unknown (nothing changes)."""
        store = self.store
        with store.lock:
            record = store.records.get(task_id)
            if record is None or record["status"] in FINISHED:
                return False
            store.journal.check()  # a full disk: refused, nothing changes
            if record["status"] == READY:
                # Reserved by a worker (prefetch): revoked in its start table, unless it
                # started already: then it is RUNNING now and cancelled as such, below.
                queued = task_id not in store.reservations.by_task
                if queued or store.reservations.revoke(task_id):
                    store.end_pending(record, TASK_CANCELLED, f"{TASK_CANCELLED}: task "
                                      f"{task_id} was cancelled before it ran\n", queued)
                    return True
            worker_id = store.running.get(task_id)
            if worker_id is None:
                return False
            worker = store.workers.get(worker_id)
            pid = worker["pid"] if worker is not None else "?"
            text = (f"{TASK_CANCELLED}: task {task_id} was cancelled while running; its worker "
                    f"{worker_id} (pid {pid}) was stopped\n")
            store.fail(task_id, TASK_CANCELLED, text)
            # Until the supervisor's signal lands, the worker must not claim another task.
            store.retire(worker_id, f"stopped: task {task_id} was cancelled")
            self.kills.append((worker_id, task_id, text))
        if self.on_kill is not None:
            self.on_kill()
        return True

    def take_kills(self):
        """The kill requests of running tasks cancelled since the last call (supervisor)."""
        with self.store.lock:
            kills, self.kills = self.kills, []
            return kills
