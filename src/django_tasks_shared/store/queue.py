"""The pending tasks of the store: which READY task a worker gets next, in O(log n).

    push(record, now) ──run_after in the future──> deferred heap (run_after, seq, id)
                      └─due──limited──> its key's sub-queue (limits.py); the key's head only
                         │              in the ready heap, and only while the key may start one
                         └─────────────> ready heap of its queue (-priority, seq, id)
    pop(now, queues): promote the due deferred entries (and the rate windows that freed a
                 slot), then the best top among the ready heaps of `queues` (a worker pool's
                 queues; None: all of them). Entries left stale (a cancel, a head replaced)
                 are skipped when they reach a top.
    drop(record, now): a cancelled READY record leaves the counts at once; its heap entry is
                 skipped when popped (lazy removal: seq in `dropped`)

One ready heap per queue name, so a pool that serves some queues never walks past the tasks of
the others, and a claim costs O(log n + number of its queues). Every entry carries the record's
`seq`, a new FIFO position each time it is (re)queued, so equal priorities run in the order they
were queued, across queues too. No lock of its own: TaskStore calls it with the store lock held,
and owns the records it looks up here (`records`, shared read-only).
"""

import heapq
import itertools
from collections import Counter
from collections.abc import Iterable

from .limits import Limits


class PendingQueue:
    def __init__(self, records):
        self.records = records          # the store's id -> record (read only here)
        self.ready: dict[str, list] = {}  # queue name -> heap of (-priority, seq, id[, key])
        self.deferred: list = []        # heap of (run_after, seq, id)
        self.dropped: set[int] = set()  # seq of heap entries whose task left the queue
        self.by_queue: dict[str, list[int]] = {}  # queue name -> [ready, deferred]
        self.size = 0
        self.limits = Limits(self)      # limited tasks' sub-queues (limits.py)
        self._seq = itertools.count()

    def __len__(self):
        return self.size

    def ready_heap(self, queue):
        heap = self.ready.get(queue)
        if heap is None:
            heap = self.ready[queue] = []
        return heap

    def push(self, record, now):
        """Queue a READY record (new, or back in the queue) with a new FIFO position `seq`."""
        record["seq"] = seq = next(self._seq)
        counts = self.by_queue.get(record["queue"])
        if counts is None:
            counts = self.by_queue[record["queue"]] = [0, 0]
        self.size += 1
        run_after = record["run_after"]
        if run_after is not None and run_after > now:
            heapq.heappush(self.deferred, (run_after, seq, record["id"]))
            counts[1] += 1
            return
        counts[0] += 1
        if "limit" in record:
            self.limits.add(record, now)
            return
        heap = self.ready.get(record["queue"])
        if heap is None:
            heap = self.ready[record["queue"]] = []
        heapq.heappush(heap, (-record["priority"], seq, record["id"]))

    def promote_due(self, now):
        """Move deferred entries whose run_after has come into the ready heaps; offer the heads
        of keys whose rate window freed a slot."""
        deferred, dropped = self.deferred, self.dropped
        while deferred and deferred[0][0] <= now:
            _, seq, task_id = heapq.heappop(deferred)
            if seq in dropped:  # left the queue while deferred
                dropped.discard(seq)
                continue
            record = self.records[task_id]
            counts = self.by_queue[record["queue"]]
            counts[1] -= 1
            counts[0] += 1
            if "limit" in record:
                self.limits.add(record, now)
            else:
                heapq.heappush(self.ready_heap(record["queue"]),
                               (-record["priority"], seq, task_id))
        limits = self.limits
        if limits.timers and limits.timers[0][0] <= now:
            limits.due(now)

    def _top(self, heap):
        """The heap's first live entry (stale ones popped), or None."""
        dropped = self.dropped
        while heap:
            entry = heap[0]
            if len(entry) == 3 and not dropped:
                return entry  # the usual case: a plain task, no cancel pending
            if entry[1] in dropped:  # left the queue while pending (a cancel)
                dropped.discard(entry[1])
            elif len(entry) > 3 and not self.limits.valid(entry):
                pass  # a limited task's entry that is no longer its key's head
            else:
                return entry
            heapq.heappop(heap)
        return None

    def pop(self, now, queues=None):
        """The READY record to run next among `queues` (None: every queue), out of the queue
        now, or None. A limited one must be started (TaskStore._start -> limits.take) before
        the next pop: its key's next task is offered then."""
        deferred, timers = self.deferred, self.limits.timers
        if (deferred and deferred[0][0] <= now) or (timers and timers[0][0] <= now):
            self.promote_due(now)
        ready = self.ready
        if queues is None and len(ready) == 1:  # the common case: one queue, every queue served
            (best_heap,) = ready.values()
            if not best_heap:
                return None
            best = best_heap[0]
            if len(best) != 3 or self.dropped:  # else a plain task, and no cancel to skip
                best = self._top(best_heap)
                if best is None:
                    return None
        else:
            best, best_heap = None, []
            heaps: Iterable[list] = ready.values() if queues is None else [
                heap for queue in queues if (heap := ready.get(queue))]
            for heap in heaps:
                top = self._top(heap) if heap else None
                if top is not None and (best is None or top < best):
                    best, best_heap = top, heap
            if best is None:
                return None
        heapq.heappop(best_heap)
        if len(best) > 3:
            self.limits.popped(best)
        record = self.records[best[2]]
        self.by_queue[record["queue"]][0] -= 1
        self.size -= 1
        return record

    def drop(self, record, now):
        """Take a READY record out of the queue; its heap entry is skipped when popped.

        Due deferred entries are promoted first, so the record is in the deferred heap exactly
        when its run_after is still in the future."""
        self.promote_due(now)
        deferred = record["run_after"] is not None and record["run_after"] > now
        self.by_queue[record["queue"]][1 if deferred else 0] -= 1
        self.size -= 1
        if "limit" in record and not deferred:
            self.limits.drop(record, now)
        else:
            self.dropped.add(record["seq"])

    def next_due(self):
        """The earliest time (time.time()) a pending task becomes startable: a deferred one's
        run_after, or a rate window freeing a slot. None if neither."""
        deferred, timers = self.deferred, self.limits.timers
        if not timers:
            return deferred[0][0] if deferred else None
        if not deferred:
            return timers[0][0]
        return min(deferred[0][0], timers[0][0])

    def counts(self):
        """{queue: {"ready": n, "deferred": n}} for health (a task held back by a limit is
        ready: due, waiting for a slot)."""
        return {q: {"ready": c[0], "deferred": c[1]} for q, c in sorted(self.by_queue.items())}

    def load(self, pending, now):
        """Take over restored READY records (a STATE_DIR start): each keeps its `seq`. Limited
        ones join their keys' sub-queues (after limits.rebuild() counted the running ones)."""
        later = [r for r in pending if r["run_after"] is not None and r["run_after"] > now]
        due = [r for r in pending if r["run_after"] is None or r["run_after"] <= now]
        self.deferred = [(r["run_after"], r.get("seq", 0), r["id"]) for r in later]
        heapq.heapify(self.deferred)
        self.ready = {}
        for r in due:
            if "limit" not in r:
                self.ready_heap(r["queue"]).append((-r["priority"], r.get("seq", 0), r["id"]))
        for heap in self.ready.values():
            heapq.heapify(heap)
        for record in due:
            if "limit" in record:
                self.limits.add(record, now)
        for queue, n in Counter(r["queue"] for r in due).items():
            self.by_queue.setdefault(queue, [0, 0])[0] += n
        for queue, n in Counter(r["queue"] for r in later).items():
            self.by_queue.setdefault(queue, [0, 0])[1] += n
        self.size += len(pending)

    def continue_after(self, top):
        """New positions after `top`, the highest seq restored."""
        self._seq = itertools.count(top + 1)
