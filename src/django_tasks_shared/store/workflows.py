"""The store's workflow part: unique keys, limits and dependencies, wired into the task's life.

    client  enqueue_workflow(record) ──> Workflows.enqueue (one lock hold):
              an id already stored (a retried call) ──> that record
              @unique key held ──> the holder's record; nothing stored      (unique.py)
              after: a parent unknown ──> UnknownDependency; nothing stored (dependencies.py)
              else TaskStore.enqueue_locked(record) ──> the stored record (FAILED at once when a
                   parent already failed)
    TaskStore, lock held, at the points of a task's life (each a no-op for a plain record):
      enqueue_locked ──stored(record)──> into the queue, or not: blocked on its parents, or
                                       a parent failed already (put_done() ends it, journaled
                                       after the record itself)
      _start         ──started(record, now, copy)──> limit slot taken, unique key (until
                                                   "started") freed, parents' results copied
      _retry         ──requeued(record, now)──> limit slot freed, unique key (until "started")
                                                taken back, the attempt's start remembered
      _ended         ──ended(record, was_running, now)──> slot freed, key freed, dependents
                                                unblocked or failed, parents unpinned
      end_pending    ──left_queue(record)──> a blocked record is in no queue
      eviction       ──pinned(id)──> kept while a dependent has not ended
    restore ──rebuild(records, now)──> indexes from the records; settle() after attach

The limits themselves live in the queue (queue.limits, limits.py): they decide what a claim
sees. The server never imports user code: every key was computed in the client.
"""

from ..protocol.status import DEPENDENCY_FAILED
from .dependencies import Dependencies, failure_text
from .unique import UniqueKeys

LIMIT_NOTE = "limit-starts:"  # durable key prefix: rate-window starts whose records are gone


class Workflows:
    def __init__(self, store):
        self.store = store
        self.unique = UniqueKeys(store)
        self.deps = Dependencies(store)
        self._doomed: list[str] = []
        self._failing_now = None    # (record, failed parent) between stored() and put_done()

    @property
    def limits(self):
        return self.store.queue.limits

    # ---- the client's call ------------------------------------------------------------------

    def enqueue(self, record):
        """Store a record with workflow fields; returns the record that stands for it (a copy):
        the new one, or the task already holding its unique key. Idempotent per id."""
        with self.store.lock:
            return self.enqueue_locked(record)

    def enqueue_locked(self, record):
        """enqueue() with the store's lock held (enqueue_many's records too, store/bulk.py)."""
        store = self.store
        existing = store.records.get(record["id"])
        if existing is not None:  # a retried call after a dropped connection
            store.journal.depend()  # answered once that record is durable
            return dict(existing)
        if "unique" in record:
            holder = self.unique.holder(record)
            if holder is not None:
                store.journal.depend()  # (the holder may be the change of this very turn)
                return dict(holder)
        if record.get("after"):
            self.deps.check(record["after"])
        store.enqueue_locked(record)
        return dict(store.records[record["id"]])

    # ---- hooks (lock held) --------------------------------------------------------------------

    def stored(self, record):
        """A new record was stored READY: False if it goes into the queue now, True if not
        (blocked on its parents, or one of them failed already: then put_done() ends it)."""
        if "unique" in record:
            self.unique.hold(record)
        if not record.get("after"):
            return False
        state = self.deps.attach(record)
        if state == "ready":
            return False
        if state != "blocked":
            self.deps.waiting[record["id"]] = 1  # in no queue: end_pending must not drop it
            self._failing_now = (record, state[1])
        return True

    def put_done(self, record):
        """After the new record is journaled: end it now if a parent had failed already."""
        failing, self._failing_now = self._failing_now, None
        if failing is not None and failing[0] is record:
            self.store.end_pending(record, DEPENDENCY_FAILED, failure_text(record, failing[1]))

    def started(self, record, now, copy):
        if "limit" in record:
            self.limits.take(record, now)
        if "unique" in record:
            self.unique.started(record)
        if record.get("after"):
            copy["dependency_results"] = self.deps.results_of(record)

    def requeued(self, record, now):
        """A retry: back to READY (the store pushes it after this)."""
        changed = []
        if "limit" in record:
            if self.limits.release(record, now):
                self.store.polls.notify_work()
            if record["limit"].get("rate") and record["last_attempted_at"] is not None:
                # the next start overwrites last_attempted_at: keep this one for a restore
                record["limit_starts"] = self._in_window(
                    [*record.get("limit_starts", ()), record["last_attempted_at"]],
                    record["limit"]["rate"], now)
                changed.append("limit_starts")
        if "unique" in record:
            self.unique.requeued(record)
        return changed

    def ended(self, record, was_running, now):
        if was_running and "limit" in record and self.limits.release(record, now):
            self.store.polls.notify_work()
        if "unique" in record:
            self.unique.ended(record)
        if "after" in record or record["id"] in self.deps.children:
            self.deps.ended(record)

    def left_queue(self, record):
        """end_pending: True if the record was blocked (it is in no queue to drop it from)."""
        return bool(self.deps.waiting) and self.deps.forget_blocked(record)

    def pinned(self, task_id):
        return task_id in self.deps.pins

    def forgotten(self, record, now):
        """A finished record leaves the store (evicted, expired): a rate-limited one's starts
        still inside its window are noted durably, so a restore still counts them."""
        spec = record.get("limit")
        if spec is None or not spec.get("rate"):
            return
        starts = self._in_window([*record.get("limit_starts", ()), record["last_attempted_at"]],
                                 spec["rate"], now)
        if not starts:
            return
        store = self.store
        key = LIMIT_NOTE + spec["key"]
        earlier = (store.durable.get(key) or {}).get("starts") or ()
        note = self._in_window([*earlier, *starts], spec["rate"], now)
        store.durable[key] = {"rate": spec["rate"], "starts": sorted(note)}
        store.journal.durable(key)

    @staticmethod
    def _in_window(starts, rate, now):
        return [t for t in starts if t is not None and t > now - rate[1]]

    # ---- restore and health --------------------------------------------------------------------

    def rebuild(self, values, pending, now):
        """After a STATE_DIR restore (lock held): the indexes from the records; returns the
        pending records that go into the queue (not those blocked on their parents, nor those
        settle() ends once a journal is attached)."""
        durable = self.store.durable
        notes = {}
        for key in [k for k in durable if k.startswith(LIMIT_NOTE)]:
            note = durable[key]
            starts = self._in_window(note["starts"], note["rate"], now)
            if starts:  # kept (pruned) for the next restore; the snapshot of this one has it
                notes[key[len(LIMIT_NOTE):]] = durable[key] = dict(note, starts=starts)
            else:
                del durable[key]
        flows = [r for r in values if "limit" in r or "unique" in r or "after" in r]
        if not flows and not notes:
            return pending
        self.limits.rebuild([r for r in flows if "limit" in r], now, notes)
        self.unique.rebuild(flows)
        self._doomed = self.deps.rebuild(flows)
        if not self.deps.waiting and not self._doomed:
            return pending
        skip = set(self.deps.waiting) | set(self._doomed)
        return [r for r in pending if r["id"] not in skip]

    def settle(self):
        doomed, self._doomed = self._doomed, []
        if doomed:
            self.deps.settle(doomed)

    def report(self, now):
        return {"unique": self.unique.report(), "limits": self.limits.report(now),
                "waiting_on_dependencies": len(self.deps),
                # finished results kept past MAX_RESULTS / RESULT_TTL: a dependent needs them
                "held_for_dependents": len(self.store.finished.held)}

    def blocked_count(self):
        return len(self.deps.waiting)

