"""Progress from inside a task: `set_progress(**fields)` in the task, `progress(result)` anywhere.

    task code:  set_progress(done=40, total=100)
        -> the Run of this task (a ContextVar that execution.execute sets) -> its Reporter,
           made on the first call (a task that reports no progress costs no Reporter)
        -> checked: JSON-compatible, no "_" keys, the whole metadata <= MAX_METADATA bytes
           (else ValueError/TypeError and nothing is stored)
        -> at most one `save_metadata` round trip per INTERVAL; calls that come faster are
           merged and held ...
    flusher thread (one per worker process): ... held fields go out INTERVAL after the last
                send even if the task does not call again (a progress bar never sticks) ...
    execution.execute(): ... and what is still held when the task ends rides on the outcome
                (finish_and_claim), so the final value is always delivered
    progress(result) -> one `metadata` round trip -> the dict, from any process
                        (client/progress.py)

The fields live in record["metadata"], the shape of Django's coming `TaskResult.raw_metadata`
(keys starting with "_" are reserved for backends), so that API will find them there.
"""

import json
import logging
import os
import threading
import time
from contextvars import ContextVar

from ..exceptions import ServerUnavailable

MAX_METADATA = 64 * 1024  # bytes of JSON per task: progress, not a second return value
INTERVAL = 0.1            # seconds: at most ~10 round trips per second per running task
QUIET = 1.0               # seconds without a send after one got no answer (a stalled server)

_reporter: ContextVar["Run | None"] = ContextVar("django_tasks_shared_progress")
_held: set["Reporter"] = set()  # reporters holding fields back, for the flusher
_held_lock = threading.Lock()
_flusher_pid = None           # the process whose flusher thread runs
logger = logging.getLogger("django_tasks_shared.worker")


class Reporter:
    """Progress of one run of one task, sent through the worker's client."""

    def __init__(self, client, task_id, metadata):
        self.client = client
        self.task_id = task_id
        self.view = dict(metadata)  # the metadata once everything held is delivered
        self.pending = {}
        self.sent_at = float("-inf")
        self.quiet_until = float("-inf")  # after a send that got no answer: hold until then
        self.closed = False
        self.sends = 0  # save_metadata round trips made (coalescing shows in it)
        # Held while a save is in flight: two saves of one task never overtake each other.
        self._lock = threading.Lock()

    def set(self, fields):
        reserved = sorted(k for k in fields if k.startswith("_"))
        if reserved:
            raise ValueError(f"set_progress(): keys starting with '_' are reserved for task "
                             f"backends ({', '.join(reserved)}); nothing was stored.")
        view = {**self.view, **fields}
        try:
            size = len(json.dumps(view))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"set_progress() takes JSON-compatible values ({exc}); nothing was "
                            "stored. Pass numbers, strings, lists and dicts.") from None
        if size > MAX_METADATA:
            raise ValueError(
                f"set_progress(): the task's progress would be {size} bytes of JSON, over the "
                f"{MAX_METADATA} byte limit; nothing was stored. Keep progress small (counts, "
                "a status line) and return large data from the task instead.")
        with self._lock:
            self.view = view
            self.pending.update(fields)
            if self._due(time.monotonic()):
                self._send()
            else:
                _hold(self)

    def _due(self, now):
        return now - self.sent_at >= INTERVAL and now >= self.quiet_until

    def _send(self):
        """One round trip with what is held (lock held). Progress is best effort: when the
        server does not answer (a stall), the fields stay held for the flusher (and the
        outcome), and the task goes on: set_progress never fails a task for it."""
        pending, self.pending = self.pending, {}
        self.sent_at = time.monotonic()
        self.sends += 1
        try:
            self.client.call("save_metadata", self.task_id, pending)
        except ServerUnavailable as exc:
            self.pending = {**pending, **self.pending}
            self.quiet_until = time.monotonic() + QUIET
            logger.debug("progress of task %s held: %s", self.task_id, exc)
            _hold(self)

    def flush_due(self):
        """From the flusher: send what is held once INTERVAL has passed since the last send;
        True when nothing is left to send."""
        with self._lock:
            if self.closed or not self.pending:
                return True
            if not self._due(time.monotonic()):
                return False
            try:
                self._send()
            except Exception:  # server gone: the worker's own loop deals with that
                logger.debug("progress flush of task %s failed", self.task_id, exc_info=True)
            return not self.pending

    def take_pending(self):
        """Fields not sent yet (they go out with the task's outcome); no flush after this."""
        with self._lock:
            self.closed = True
            pending, self.pending = self.pending, {}
        with _held_lock:
            _held.discard(self)
        return pending


class Run:
    """The progress side of one run of one task; its Reporter is made on the first set_progress."""

    __slots__ = ("client", "task_id", "metadata", "reporter")

    def __init__(self, client, task_id, metadata):
        self.client = client
        self.task_id = task_id
        self.metadata = metadata
        self.reporter = None

    def get_reporter(self):
        reporter = self.reporter
        if reporter is None:
            with _held_lock:  # two threads of one task reporting at once get one Reporter
                if self.reporter is None:
                    self.reporter = Reporter(self.client, self.task_id, self.metadata or {})
                reporter = self.reporter
        return reporter

    @property
    def sends(self):
        """save_metadata round trips made so far (0 before any set_progress)."""
        return 0 if self.reporter is None else self.reporter.sends

    def take_pending(self):
        """Fields not sent yet (they go out with the task's outcome); no flush after this."""
        reporter = self.reporter
        return None if reporter is None else reporter.take_pending()


def _hold(reporter):
    """Hand a reporter with held fields to the flusher thread (started once per process)."""
    global _flusher_pid
    with _held_lock:
        _held.add(reporter)
        if _flusher_pid != os.getpid():
            _flusher_pid = os.getpid()
            threading.Thread(target=_flush_loop, name="progress-flusher", daemon=True).start()


def _flush_loop():
    while True:
        time.sleep(INTERVAL / 2)
        with _held_lock:
            reporters = list(_held)
        for reporter in reporters:
            if reporter.flush_due():
                with _held_lock:
                    if not reporter.pending:
                        _held.discard(reporter)


def set_progress(**fields):
    """Merge `fields` into the running task's metadata, readable with `progress(result)`.

    Cheap in a loop: calls coming faster than ~10 per second are merged, and the last value
    always reaches the server (with the task's outcome at the latest). Raises RuntimeError
    outside a task run by a django-tasks-shared worker.
    """
    run = _reporter.get(None)
    if run is None:
        raise RuntimeError(
            "set_progress() works only inside a task run by a django-tasks-shared worker; here "
            "no such task is running (called from a web process, a shell, or a task run by "
            "another backend). Call it from the task's code.")
    if fields:
        run.get_reporter().set(fields)
