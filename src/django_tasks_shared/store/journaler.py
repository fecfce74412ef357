"""The store's side of STATE_DIR: every change journaled, and a snapshot's view of the state.

    TaskStore (lock held): change a record in memory, then
        journal.put / set / forget / durable  ->  Journal.append(op)   (durable/journal.py)
    server, after a turn's requests, before their replies: commit() -> Journal.commit()
    start:      StateDir.read() -> store.restore(...) -> attach(switch) -> end_interrupted()
    compaction: attach(switch) -> snapshot_chunks(ids) -> StateDir writes snapshot N+1

Without a STATE_DIR `journal` is None and every hook returns at once. Every part of the store
that changes a record makes the change durable through these hooks, and only through them.

While the STATE_DIR cannot be written (durable/journal.py: `failure`), every change is refused
BEFORE it is made: the change paths call check() first (StorageUnavailable, nothing stored), and
claims hand nothing out (`failing`). `need` is the journal position the reply to the request
being served depends on (the event loop holds the reply until the journal is durable there);
only the event loop's own appends set it (`owner`), so a supervisor's change made meanwhile
never holds a read's reply.
"""

import os
import time
from threading import get_ident

from ..durable.format import frame
from ..exceptions import StorageUnavailable

REPORT_GRACE = 2.0  # seconds after writing works again before TIME_LIMIT is judged again
PAUSE_SLACK = 1.0   # seconds before a failure whose tasks' time is not counted either


class Journaler:
    def __init__(self, store):
        self.store = store
        self.journal = None         # a durable.journal.Journal once a STATE_DIR is attached
        self._checkpointed = None   # the counters as last journaled
        self.need = 0               # position the current reply depends on (see take_need)
        self.owner = None           # the thread whose appends set `need` (the event loop's)
        self.pause = None           # (since, until) of the last time writing failed
        self.on_durable = None      # the event loop's wake(): held replies may go out now

    # ---- storage faults (lock held) -------------------------------------------------------

    @property
    def failing(self):
        """True while the journal cannot be written: no change, no task handed out."""
        journal = self.journal
        return journal is not None and journal.failure is not None

    def check(self):
        """Refuse the change about to be made (raise StorageUnavailable) while the journal
        cannot be written. Call it before anything changes in memory."""
        journal = self.journal
        if journal is None or journal.failure is None:
            return
        failure = journal.failure
        failure.refused += 1
        since = time.strftime("%H:%M:%S", time.localtime(failure.since))
        raise StorageUnavailable(
            f"The task server cannot write its STATE_DIR {os.path.dirname(journal.path)} "
            f"({failure.describe()}, since {since}); nothing was stored. Free space there or "
            f"fix the disk: the server resumes by itself within about a second of writing "
            f"working again, and reads go on meanwhile.")

    def depend(self):
        """The reply reports a change made earlier (a retried enqueue of a stored id): it may
        go out only once everything journaled so far is durable."""
        journal = self.journal
        if journal is not None and get_ident() == self.owner:
            self.need = max(self.need, journal.appended)

    def paused(self, now):
        """True while changes cannot be made durable, and for REPORT_GRACE after: no task is
        judged past TIME_LIMIT then (its report may be on its way again)."""
        if self.failing:
            return True
        return self.pause is not None and now < self.pause[1] + REPORT_GRACE

    def ran(self, started_at, now):
        """Seconds a task started at `started_at` has run, less the last pause of the journal
        (from PAUSE_SLACK before it began: a task handed out in the turn that first failed
        waited for the disk with its reply)."""
        pause = self.pause
        if pause is None or started_at >= pause[1]:
            return now - started_at
        return now - started_at - (pause[1] - max(started_at, pause[0] - PAUSE_SLACK))

    def take_need(self):
        """The position the reply being sent depends on (0: none), reset for the next one."""
        need, self.need = self.need, 0
        return need

    def durable_position(self):
        """The journal position up to which replies may go out."""
        journal = self.journal
        return float("inf") if journal is None else journal.durable()

    def resumed(self, since=None):
        """Writing works again (the guard): parked claims are served, held replies go out.
        `since`: when changes stopped being durable (the TIME_LIMIT clock skips that pause)."""
        with self.store.lock:
            if since is not None:
                self.pause = (since, self.store.clock())
            self.store.polls.notify_work(everyone=True)
        if self.on_durable is not None:
            self.on_durable()

    # Hooks (lock held). Every change to the state that a client may be told about goes through
    # one of these, right after the change is made in memory; see durable/format.py.
    def put(self, record):
        """A new record, or one replaced as a whole."""
        if self.journal is not None:
            position = self.journal.append(["p", record])
            if get_ident() == self.owner:
                self.need = position

    def set(self, record, *fields):
        """`fields` of an existing record changed (e.g. "status", "finished_at", "errors")."""
        if self.journal is not None:
            position = self.journal.append(["s", record["id"], {f: record[f] for f in fields}])
            if get_ident() == self.owner:
                self.need = position

    def forget(self, task_id):
        """The record is gone (evicted, expired, removed). No reply waits for this entry: a
        read that expires a result answers at once (lost at a crash, it expires again)."""
        if self.journal is not None:
            self.journal.append(["f", task_id])

    def durable(self, key):
        """store.durable[key] changed (or was deleted)."""
        if self.journal is not None:
            durable = self.store.durable
            if key in durable:
                position = self.journal.append(["d", key, durable[key]])
            else:
                position = self.journal.append(["d", key])
            if get_ident() == self.owner:
                self.need = position

    def commit(self):
        """Make the journaled changes durable (as FSYNC says) before a reply goes out. Called by
        the server once per loop turn and by the supervisor after every tick; cheap when
        nothing changed. False while some of them cannot be written yet (they stay buffered)."""
        journal = self.journal
        return True if journal is None else journal.commit()

    def checkpoint_counters(self):
        """Journal the counters if they changed since the last checkpoint (once a second)."""
        store = self.store
        with store.lock:
            if self.journal is not None and store.counters != self._checkpointed and \
                    self.journal.failure is None:
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
