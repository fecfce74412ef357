"""The TaskStore's side of STATE_DIR: journal hooks, restore and snapshot capture.

    TaskStore method (lock held): change a record in memory
        -> _log_put / _log_set / _log_forget / _log_durable -> journal.append(op)   (journal.py)
    server, after the method, before the reply: commit() -> journal.commit()
    start:      statedir.read() -> load(records...) -> attach_journal(switch) -> end_interrupted()
    compaction: attach_journal(switch) -> snapshot_chunks(ids) -> statedir writes snapshot N+1

A mixin of TaskStore: it uses the store's lock and structures (see store.py), and it is where
every feature that changes a record finds the one way to make the change durable.
"""

import heapq
import itertools
from collections import Counter, OrderedDict

from .retries import retries_supervisor_end
from .status import FINISHED, READY, RUNNING, WORKER_LOST


class JournaledStore:
    _journal = None         # a journal.Journal once a STATE_DIR is attached
    _checkpointed = None    # the counters as last journaled

    # Journal hooks (lock held). Every change to the state that a client may be told about goes
    # through one of these, right after the change is made in memory; see journal.py.
    def _log_put(self, record):
        """A new record, or one replaced as a whole."""
        if self._journal is not None:
            self._journal.append(["p", record])

    def _log_set(self, record, *fields):
        """`fields` of an existing record changed (e.g. "status", "finished_at", "errors")."""
        if self._journal is not None:
            self._journal.append(["s", record["id"], {f: record[f] for f in fields}])

    def _log_forget(self, task_id):
        """The record is gone (evicted, expired, removed)."""
        if self._journal is not None:
            self._journal.append(["f", task_id])

    def _log_durable(self, key):
        """self.durable[key] changed (or was deleted)."""
        if self._journal is not None:
            if key in self.durable:
                self._journal.append(["d", key, self.durable[key]])
            else:
                self._journal.append(["d", key])

    def commit(self):
        """Make the journaled changes durable (as FSYNC says) before a reply goes out. Called by
        the server after every request and by the supervisor after every tick; cheap when
        nothing changed."""
        journal = self._journal
        if journal is not None:
            journal.commit()

    def load(self, records, durable, counters):
        """Take over a restored state (before serving): `records` with the finished ones in LRU
        order. Pending ones keep their FIFO `seq`. Returns (pending, results, running) where
        `running` lists the records that were RUNNING when the previous server stopped: give
        them to end_interrupted() once a journal is attached."""
        with self._lock:
            now = self._clock()
            self.counters.update(counters)
            self.durable.update(durable)
            if self._records:
                self._records.update(records)
            else:  # the usual case, at start-up: take the restored dict, no copy of 200,000
                self._records = records
            # Comprehensions rather than one loop with branches: 200,000 records restore in
            # about half the time (start-up time is the point of this method).
            values = records.values()
            pending = [r for r in values if r["status"] == READY]
            running = [r["id"] for r in values if r["status"] == RUNNING]
            self._finished = OrderedDict.fromkeys(
                [i for i, r in records.items() if r["status"] in FINISHED])
            later = [r for r in pending if r["run_after"] is not None and r["run_after"] > now]
            due = [r for r in pending if r["run_after"] is None or r["run_after"] <= now]
            self._deferred = [(r["run_after"], r.get("seq", 0), r["id"]) for r in later]
            self._ready = [(-r["priority"], r.get("seq", 0), r["id"]) for r in due]
            heapq.heapify(self._ready)
            heapq.heapify(self._deferred)
            for queue, n in Counter(r["queue"] for r in due).items():
                self._pending_by_queue.setdefault(queue, [0, 0])[0] += n
            for queue, n in Counter(r["queue"] for r in later).items():
                self._pending_by_queue.setdefault(queue, [0, 0])[1] += n
            self._running.update(dict.fromkeys(running))  # owned by no worker of ours
            if self.result_ttl is not None:
                self._expiry.extend(sorted(
                    (self._records[i]["finished_at"], i) for i in self._finished))
            top = max((r.get("seq", 0) for r in values), default=-1)
            self._seq = itertools.count(top + 1)
            self._rebuild_finish_order()  # the results listing (store_web.py)
            return self._pending(), len(self._finished), running

    def end_interrupted(self, task_ids, text):
        """Tasks that were RUNNING when the previous server died end FAILED (WorkerLost): they
        may have had effects, so they are never run again (at most once), unless their retry
        policy names WorkerLost in `on` (then they go back to the queue, see store._fail)."""
        with self._lock:
            for task_id in task_ids:
                record = self._records[task_id]
                again = retries_supervisor_end(record.get("retry"), WORKER_LOST,
                                               len(record["worker_ids"]))
                outcome = ("its retry policy names WorkerLost: it goes back to the queue" if again
                           else "it was not run again")
                self._fail(task_id, WORKER_LOST, f"{WORKER_LOST}: {text}; {outcome}\n")

    def attach_journal(self, switch):
        """Call `switch()` (which starts a new journal file) with the state frozen, and return
        what a snapshot of exactly that moment needs: (meta, ids) where ids lists pending and
        running records first, then finished ones in LRU order. `snapshot_chunks` reads them."""
        with self._lock:
            self._journal = switch()
            finished = list(self._finished)
            all_ids = list(self._records)
            meta = {"counters": dict(self.counters), "durable": dict(self.durable),
                    "written_at": self._clock()}
        done = set(finished)
        return meta, [i for i in all_ids if i not in done] + finished

    def snapshot_chunks(self, ids, size=256):
        """Framed ["P", {id: record, ...}] entries for `ids`, `size` records per lock hold, so
        clients wait at most one chunk (~1 ms). A record changed after attach_journal() is
        written as it is now: the new journal's operations set absolute values, so replaying
        them over it still gives the right state (a "fuzzy" snapshot)."""
        from .journal import frame

        for start in range(0, len(ids), size):
            with self._lock:  # pickled under the lock: no record changes half-way through
                records = self._records
                data = frame(["P", {i: r for i in ids[start:start + size]
                                    if (r := records.get(i)) is not None}])
            yield data

    def checkpoint_counters(self):
        """Journal the counters if they changed since the last checkpoint (once a second)."""
        with self._lock:
            if self._journal is not None and self.counters != self._checkpointed:
                self._checkpointed = dict(self.counters)
                self._journal.append(["c", self._checkpointed])

