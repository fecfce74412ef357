"""The long-polls of TaskStore (a mixin) in two forms: blocking, for callers in this process, and
non-blocking, for the event loop (eventloop.py), which parks the request instead of a thread.

    wait(id, timeout)              ──blocks on an Event in _waiters[id]──> record | None
    watch(id, watcher)             ──finished / unknown──> (True, record | None)
                                   └─otherwise──> (False, None); watcher.set() once it finishes
                                                  (from any thread, store lock held)
    finish_and_claim(w, out, t)    ──blocks on _work──> record | None | STOP
    claim_now(w, outcome)          ──> record | STOP | NOTHING (nothing ready: park the claim)
    claim_for([w, ...])            ──> one of those per parked worker thread, one lock hold
    on_work()                      <── _notify_work(): a task became ready, or a worker must stop
                                       (drain, retire, cancel): the loop retries parked claims

Everything below runs under the store's one lock, like store.py.
"""

import threading

from .status import FINISHED, STOP

NOTHING = object()  # claim_now: nothing to hand out yet (not None: None is a reply)


class LongPollMixin:
    def _init_longpoll(self):
        self._waiters = {}  # id -> [objects with set()], told once the task finishes
        self.on_work = None  # the event loop's callback (see _notify_work)

    # ---- blocking forms (callers in this process) ----------------------------------------

    def wait(self, task_id, timeout):
        """Block until the task is finished or `timeout` passes; returns the record or None."""
        event = threading.Event()
        done, record = self.watch(task_id, event)
        if done:
            return record
        if not event.wait(timeout):
            self.unwatch(task_id, event)
        return self.get(task_id)

    def finish_and_claim(self, worker_id, outcome, timeout):
        """Report the outcome of the worker thread's last task (or None), then block up to
        `timeout` seconds for the next one. Returns a record, None (nothing to do yet) or STOP."""
        deadline = self._clock() + timeout
        with self._lock:
            got = self._report_and_claim(worker_id, outcome)
            while got is NOTHING:
                now = self._clock()
                remaining = deadline - now
                if remaining <= 0:
                    return None
                if self._deferred:
                    remaining = min(remaining, max(self._deferred[0][0] - now, 0.001))
                self._work.wait(remaining)
                got = self._claim(worker_id)
            return got

    # ---- non-blocking forms (the event loop) -----------------------------------------------

    def watch(self, task_id, watcher):
        """(True, record or None) if the task is finished or unknown; else (False, None) and
        `watcher.set()` is called once it finishes (a retried attempt is not the finish)."""
        with self._lock:
            record = self._lookup(task_id)
            if record is None or record["status"] in FINISHED:
                return True, None if record is None else dict(record)
            self._waiters.setdefault(task_id, []).append(watcher)
            return False, None

    def unwatch(self, task_id, watcher):
        with self._lock:
            watchers = self._waiters.get(task_id)
            if watchers is not None and watcher in watchers:
                watchers.remove(watcher)
                if not watchers:
                    del self._waiters[task_id]

    def claim_now(self, worker_id, outcome):
        """finish_and_claim without the wait: record, STOP, or NOTHING (park and retry)."""
        with self._lock:
            return self._report_and_claim(worker_id, outcome)

    def claim_for(self, worker_ids):
        """Retry parked claims in their order (first parked, first served)."""
        with self._lock:
            return [self._claim(worker_id) for worker_id in worker_ids]

    def next_due(self):
        """The earliest run_after of a deferred task (time.time()), or None."""
        deferred = self._deferred
        return deferred[0][0] if deferred else None

    # ---- internals (lock held) ------------------------------------------------------------

    def _report_and_claim(self, worker_id, outcome):
        worker = self._workers.get(worker_id)
        if outcome is not None:
            self._finish(outcome, worker_id)
        if worker is not None and worker["state"] == "starting" and not self._draining \
                and not worker["retiring"]:  # a worker told to stop at once never was ready
            worker["state"] = "idle"
            worker["ready_at"] = self._clock()
        return self._claim(worker_id)

    def _claim(self, worker_id):
        worker = self._workers.get(worker_id)
        if worker is None or self._draining or worker["retiring"]:
            return STOP
        limit = self.max_tasks_per_worker
        if limit is not None and worker["claimed"] >= limit:
            worker["retiring"] = True
            worker["retire_reason"] = f"MAX_TASKS_PER_WORKER={limit} reached"
            return STOP
        now = self._clock()
        record = self._pop_ready(now)
        if record is None:
            return NOTHING
        return self._start(record, worker_id, worker, now)

    def _notify_work(self, everyone=False):
        """A task became ready (or, with everyone, some worker threads must stop)."""
        if everyone:
            self._work.notify_all()
        else:
            self._work.notify()
        if self.on_work is not None:
            self.on_work()

    def _tell_finished(self, task_id):
        for watcher in self._waiters.pop(task_id, ()):
            watcher.set()
