"""The store's long-polls in two forms: blocking, for callers in this process, and non-blocking,
for the event loop (server/dispatch.py), which parks the request instead of a thread.

    wait(id, timeout)              ──blocks on an Event (a watcher)──> record | None
    watch(id, watcher)             ──finished / unknown──> (True, record | None)
                                   └─otherwise──> (False, None); watcher.set() once it finishes
                                                  (from any thread, store lock held)
    finish_and_claim(w, out, t)    ──blocks on `work`──> record | None | STOP
    report_and_claim(w, out, t, thread, seq)  the same with a claim token (store/claims.py)
    claim_now(w, outcome, token)   ──> record | STOP | NOTHING (nothing ready: park the claim)
    claim_for([(w, token), ...])   ──> one of those per parked worker thread, one lock hold
    on_work()                      <── notify_work(): a task became ready, or a worker must stop
                                       (drain, retire, cancel): the loop retries parked claims

What a claim hands out is the store's decision (TaskStore.claim); this module only waits.
"""

import threading

from ..protocol.status import FINISHED

NOTHING = object()  # claim: nothing to hand out yet (not None: None is a reply)


class LongPolls:
    def __init__(self, store):
        self.store = store
        self.work = threading.Condition(store.lock)  # signalled when a task becomes ready
        self.waiters = {}   # id -> [objects with set()], told once the task finishes
        self.on_work = None  # the event loop's callback (see notify_work)

    # ---- blocking forms (callers in this process) ----------------------------------------

    def wait(self, task_id, timeout):
        """Block until the task is finished or `timeout` passes; returns the record or None."""
        event = threading.Event()
        done, record = self.watch(task_id, event)
        if done:
            return record
        if not event.wait(timeout):
            self.unwatch(task_id, event)
        return self.store.get(task_id)

    def finish_and_claim(self, worker_id, outcome, timeout, token=None):
        """Report the outcome of the worker thread's last task (or None), then block up to
        `timeout` seconds for the next one. Returns a record, None (nothing to do yet) or STOP."""
        store = self.store
        deadline = store.clock() + timeout
        with store.lock:
            got = store.claim(worker_id, outcome, token)
            while got is NOTHING:
                now = store.clock()
                remaining = deadline - now
                if remaining <= 0:
                    return None
                due = store.queue.next_due()
                if due is not None:
                    remaining = min(remaining, max(due - now, 0.001))
                self.work.wait(remaining)
                got = store.claim(worker_id, None, token)
            return got

    def report_and_claim(self, worker_id, outcome, timeout, thread, seq):
        """finish_and_claim with the claim token (thread, seq): idempotent (store/claims.py)."""
        return self.finish_and_claim(worker_id, outcome, timeout, (thread, seq))

    # ---- non-blocking forms (the event loop) -----------------------------------------------

    def watch(self, task_id, watcher):
        """(True, record or None) if the task is finished or unknown; else (False, None) and
        `watcher.set()` is called once it finishes (a retried attempt is not the finish)."""
        with self.store.lock:
            record = self.store.lookup(task_id)
            if record is None or record["status"] in FINISHED:
                return True, None if record is None else dict(record)
            self.waiters.setdefault(task_id, []).append(watcher)
            return False, None

    def unwatch(self, task_id, watcher):
        with self.store.lock:
            watchers = self.waiters.get(task_id)
            if watchers is not None and watcher in watchers:
                watchers.remove(watcher)
                if not watchers:
                    del self.waiters[task_id]

    def claim_now(self, worker_id, outcome, token=None):
        """finish_and_claim without the wait: record, STOP, or NOTHING (park and retry)."""
        with self.store.lock:
            return self.store.claim(worker_id, outcome, token)

    def claim_for(self, claims):
        """Retry parked claims, (worker id, token) pairs, in their order (first parked, first
        served)."""
        store = self.store
        with store.lock:
            return [store.claim(worker_id, None, token) for worker_id, token in claims]

    def next_due(self):
        """The earliest run_after of a deferred task (time.time()), or None."""
        return self.store.queue.next_due()

    # ---- the store's hooks (lock held) -----------------------------------------------------

    def notify_work(self, everyone=False):
        """A task became ready (or, with everyone, some worker threads must stop)."""
        if everyone:
            self.work.notify_all()
        else:
            self.work.notify()
        if self.on_work is not None:
            self.on_work()

    def finished(self, task_id):
        for watcher in self.waiters.pop(task_id, ()):
            watcher.set()
