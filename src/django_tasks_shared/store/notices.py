"""End notices: Django's `task_finished` for the tasks the SERVER ends, sent by a worker.

A worker sends task_finished itself for the tasks it runs to the end. The tasks the server ends
(WorkerLost, TimeLimitExceeded, MemoryLimitExceeded, TaskCancelled while pending or running, a
task found RUNNING after a crash) end where there is no Django to send a signal from, so each
such end leaves a notice that a worker process delivers:

    TaskStore.fail / end_pending (lock held; not when the policy retries the task)
        -> add(record): durable["notice:<id>"] = {"record": the final record, "at": time},
           journaled in the same turn as the end (one commit: both on disk, or neither)
    worker notice thread ── take_notices(worker_id, done, limit) ──> take():
        1. the ids in `done` (delivered) are deleted: durable entries gone, journaled
        2. up to `limit` notices are leased to the worker (in memory: LEASE seconds, or until
           the worker exits: worker_exited -> release) and their final records returned
        the worker sends task_finished for each, then reports it in `done` of its next call
    restore (STATE_DIR): load() rebuilds the pending notices from store.durable; leases start
        afresh (nobody holds one after a restart)

Delivery is at least once: a notice is deleted only after a worker said it was delivered, so a
worker that dies mid-delivery, or a server crash before the ack reached the journal, sends it
again (docs/architecture.md, "End notices", says exactly when). Without a STATE_DIR the notices
die with the server, as the results do. At most MAX_NOTICES wait; past that the oldest is
dropped (counted in health), so workers that never take them (0.1.0 workers) cannot grow the
server without bound.
"""

from ..protocol.records import Record

PREFIX = "notice:"
LEASE = 300.0          # seconds a worker may take to send one batch before another may
MAX_NOTICES = 10_000   # notices waiting for a worker; past it the oldest is dropped


class Notices:
    def __init__(self, store):
        self.store = store
        self.pending: dict[str, tuple | None] = {}  # id -> None or (worker id, lease until)
        self.dropped = 0
        self.delivered = 0

    # ---- the store's hooks (lock held) ---------------------------------------------------------

    def add(self, record: Record):
        """The server ended `record` for good: a worker is to send task_finished for it."""
        store = self.store
        task_id = record["id"]
        key = PREFIX + task_id
        # A shallow copy is enough: a record's inner lists are replaced, never mutated.
        store.durable[key] = {"record": dict(record), "at": store.clock()}
        store.journal.durable(key)
        self.pending.pop(task_id, None)
        self.pending[task_id] = None
        while len(self.pending) > MAX_NOTICES:
            self._delete(next(iter(self.pending)))
            self.dropped += 1

    def release(self, worker_id):
        """The worker exited: what it had leased goes to the next worker that asks."""
        for task_id, lease in self.pending.items():
            if lease is not None and lease[0] == worker_id:
                self.pending[task_id] = None

    def load(self):
        """After a restore: the notices kept in store.durable, oldest first."""
        durable = self.store.durable
        entries = sorted((value.get("at", 0.0), key[len(PREFIX):])
                         for key, value in durable.items() if key.startswith(PREFIX))
        self.pending = dict.fromkeys(task_id for _, task_id in entries)

    def report(self):
        """For health: how many wait, how many a worker is sending now, how many were dropped."""
        leased = sum(lease is not None for lease in self.pending.values())
        return {"pending": len(self.pending), "leased": leased, "delivered": self.delivered,
                "dropped": self.dropped}

    # ---- the wire (a worker's notice thread) --------------------------------------------------

    def take(self, worker_id, done=(), limit=100):
        """Delete the delivered notices `done`, then lease up to `limit` to `worker_id`: their
        final records. A repeated call (its reply was lost) gets the same ones back."""
        store = self.store
        with store.lock:
            if done:
                store.journal.check()  # a full disk: the acks are refused; the worker keeps them
            for task_id in done:
                if task_id in self.pending:
                    self._delete(task_id)
                    self.delivered += 1
            if worker_id not in store.workers or not self.pending or limit <= 0:
                return []  # an unknown worker's lease would never be released
            now = store.clock()
            durable = store.durable
            out = []
            for task_id, lease in self.pending.items():
                if lease is None or lease[0] == worker_id or lease[1] <= now:
                    self.pending[task_id] = (worker_id, now + LEASE)
                    out.append(dict(durable[PREFIX + task_id]["record"]))
                    if len(out) >= limit:
                        break
            return out

    def _delete(self, task_id):
        del self.pending[task_id]
        key = PREFIX + task_id
        if self.store.durable.pop(key, None) is not None:
            self.store.journal.durable(key)
