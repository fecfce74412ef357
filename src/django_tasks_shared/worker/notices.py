"""The worker's end-notice thread: Django's `task_finished` for the tasks the server ended
(WorkerLost, TimeLimitExceeded, MemoryLimitExceeded, TaskCancelled, a task found RUNNING after a
crash), which no worker finished and so none signalled. The server side: store/notices.py.

    loop: records = take_notices(worker_id, done, LIMIT)         one round trip
          each record -> TaskResult (FAILED, the server's error last; a stand-in task when it
                         does not import here) -> task_finished.send_robust(sender, ...)
                      -> its id into `done`: acknowledged with the next call, made at once
          nothing came -> wait POLL seconds (or until stop())
    stop() (the worker is stopping): the last acknowledgements sent, then the thread ends
    a 0.1.0 server answers "take_notices ... is not exposed": it keeps no notices; the thread
    ends (mixed versions during `tasks_reload`)

A receiver that raises is logged and the notice still counts as delivered (send_robust: every
other receiver gets it too); a notice is never retried in a loop. The receivers run in this
thread, beside the task threads, with their own database connection (closed as a request's).
"""

import logging
import threading

from django.db import close_old_connections
from django.tasks.signals import task_finished

from ..client.results import to_task_result
from ..exceptions import ServerUnavailable

POLL = 1.0          # seconds between two looks when nothing waits
LIMIT = 50          # notices taken per call
STOP_TIMEOUT = 5.0  # seconds stop() waits for the last acknowledgements
FIRST_TIMEOUT = 5.0  # seconds start() waits for the thread's first call
logger = logging.getLogger("django_tasks_shared.worker")


class NoticeSender:
    def __init__(self, client, worker_id, sender):
        self.client = client
        self.worker_id = worker_id
        self.sender = sender
        self.sent = 0
        self._stop = threading.Event()
        self._first = threading.Event()  # the thread's first call was answered (or failed)
        self.thread = threading.Thread(target=self._run, name="end-notices", daemon=True)

    def start(self, timeout=FIRST_TIMEOUT):
        """Start the thread and wait for its first call: its connection exists before the task
        threads claim anything (a worker that is ready holds all its connections)."""
        self.thread.start()
        self._first.wait(timeout)
        return self

    def stop(self, timeout=STOP_TIMEOUT):
        self._stop.set()
        self.thread.join(timeout)

    def _run(self):
        done: list[str] = []
        while True:
            stopping = self._stop.is_set()
            if stopping and not done:
                return
            try:
                try:
                    records = self.client.call("take_notices", self.worker_id, done,
                                               0 if stopping else LIMIT)
                finally:
                    self._first.set()
            except AttributeError as exc:
                if "not exposed" in str(exc):
                    logger.info("the task server does not deliver end notices (an older "
                                "release): task_finished comes only from the tasks a worker "
                                "finishes")
                    return
                logger.exception("taking end notices failed")
                if stopping or self._stop.wait(POLL):
                    return
                continue
            except (ServerUnavailable, Exception) as exc:
                # `done` is kept and sent again: acknowledging twice is harmless, and the server
                # hands the same leased notices back to us, never to a second worker.
                if not isinstance(exc, ServerUnavailable):
                    logger.exception("taking end notices failed")
                if stopping or self._stop.wait(POLL):
                    return
                continue
            done = []
            if records:
                done = self._deliver(records)
            elif self._stop.wait(POLL):
                continue  # stopping: the loop's top sends nothing more and ends

    def _deliver(self, records):
        """task_finished for each record; returns the ids delivered."""
        delivered = []
        close_old_connections()
        try:
            for record in records:
                try:
                    result = to_task_result(record)
                except Exception:  # an unreadable record: logged, and never offered again
                    logger.exception("end notice of task %s: its record cannot be read",
                                     record.get("id"))
                    delivered.append(record["id"])
                    continue
                for receiver, response in task_finished.send_robust(self.sender,
                                                                    task_result=result):
                    if isinstance(response, BaseException):
                        logger.error("a task_finished receiver (%r) raised for task %s: %r",
                                     receiver, result.id, response, exc_info=response)
                delivered.append(record["id"])
                self.sent += 1
        finally:
            close_old_connections()
        return delivered


def start(client, worker_id, sender):
    """The notice thread of this worker process, started."""
    return NoticeSender(client, worker_id, sender).start()
