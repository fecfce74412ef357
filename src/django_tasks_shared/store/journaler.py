"""The store's side of STATE_DIR: every change journaled, and a snapshot's view of the state.

    TaskStore (lock held): change a record in memory, then
        journal.put / set / forget / durable  ->  Journal.append(op)   (durable/journal.py)
    server, after a turn's requests, before their replies: commit() -> Journal.commit()
    start:      StateDir.read() -> store.restore(...) -> attach(switch) -> end_interrupted()
    compaction: attach(switch) -> snapshot_chunks(ids) -> StateDir writes snapshot N+1

Without a STATE_DIR `journal` is None and every hook returns at once. Every part of the store
that changes a record makes the change durable through these hooks, and only through them.
"""

from ..durable.format import frame


class Journaler:
    def __init__(self, store):
        self.store = store
        self.journal = None         # a durable.journal.Journal once a STATE_DIR is attached
        self._checkpointed = None   # the counters as last journaled

    # Hooks (lock held). Every change to the state that a client may be told about goes through
    # one of these, right after the change is made in memory; see durable/format.py.
    def put(self, record):
        """A new record, or one replaced as a whole."""
        if self.journal is not None:
            self.journal.append(["p", record])

    def set(self, record, *fields):
        """`fields` of an existing record changed (e.g. "status", "finished_at", "errors")."""
        if self.journal is not None:
            self.journal.append(["s", record["id"], {f: record[f] for f in fields}])

    def forget(self, task_id):
        """The record is gone (evicted, expired, removed)."""
        if self.journal is not None:
            self.journal.append(["f", task_id])

    def durable(self, key):
        """store.durable[key] changed (or was deleted)."""
        if self.journal is not None:
            durable = self.store.durable
            if key in durable:
                self.journal.append(["d", key, durable[key]])
            else:
                self.journal.append(["d", key])

    def commit(self):
        """Make the journaled changes durable (as FSYNC says) before a reply goes out. Called by
        the server once per loop turn and by the supervisor after every tick; cheap when
        nothing changed."""
        journal = self.journal
        if journal is not None:
            journal.commit()

    def checkpoint_counters(self):
        """Journal the counters if they changed since the last checkpoint (once a second)."""
        store = self.store
        with store.lock:
            if self.journal is not None and store.counters != self._checkpointed:
                self._checkpointed = dict(store.counters)
                self.journal.append(["c", self._checkpointed])

    # ---- snapshots -----------------------------------------------------------------------------

    def attach(self, switch):
        """Call `switch()` (which starts a new journal file) with the state frozen, and return
        what a snapshot of exactly that moment needs: (meta, ids) where ids lists pending and
        running records first, then finished ones in LRU order. `snapshot_chunks` reads them."""
        store = self.store
        with store.lock:
            self.journal = switch()
            finished = list(store.finished)
            all_ids = list(store.records)
            meta = {"counters": dict(store.counters), "durable": dict(store.durable),
                    "written_at": store.clock()}
        done = set(finished)
        return meta, [i for i in all_ids if i not in done] + finished

    def snapshot_chunks(self, ids, size=256):
        """Framed ["P", {id: record, ...}] entries for `ids`, `size` records per lock hold, so
        clients wait at most one chunk (~1 ms). A record changed after attach() is written as
        it is now: the new journal's operations set absolute values, so replaying them over it
        still gives the right state (a "fuzzy" snapshot)."""
        store = self.store
        for start in range(0, len(ids), size):
            with store.lock:  # pickled under the lock: no record changes half-way through
                records = store.records
                data = frame(["P", {i: r for i in ids[start:start + size]
                                    if (r := records.get(i)) is not None}])
            yield data
