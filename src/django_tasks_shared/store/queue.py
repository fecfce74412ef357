"""The pending tasks of the store: which READY task a worker gets next, in O(log n).

    push(record, now) ──run_after in the future──> deferred heap (run_after, seq, id)
                      └─due─────────────────────> ready heap (-priority, seq, id)
    pop(now):    promote the due deferred entries, then the ready heap's top
    drop(record, now): a cancelled READY record leaves the counts at once; its heap entry is
                 skipped when popped (lazy removal: seq in `dropped`)

Every entry carries the record's `seq`, a new FIFO position each time it is (re)queued, so equal
priorities run in the order they were queued. No lock of its own: TaskStore calls it with the
store lock held, and owns the records it looks up here (`records`, shared read-only).
"""

import heapq
import itertools
from collections import Counter


class PendingQueue:
    def __init__(self, records):
        self.records = records          # the store's id -> record (read only here)
        self.ready = []                 # heap of (-priority, seq, id)
        self.deferred = []              # heap of (run_after, seq, id)
        self.dropped = set()            # seq of heap entries whose task left the queue
        self.by_queue = {}              # queue name -> [ready, deferred]
        self._seq = itertools.count()

    def __len__(self):
        return len(self.ready) + len(self.deferred) - len(self.dropped)

    def push(self, record, now):
        """Queue a READY record (new, or back in the queue) with a new FIFO position `seq`."""
        record["seq"] = seq = next(self._seq)
        counts = self.by_queue.setdefault(record["queue"], [0, 0])
        run_after = record["run_after"]
        if run_after is not None and run_after > now:
            heapq.heappush(self.deferred, (run_after, seq, record["id"]))
            counts[1] += 1
        else:
            heapq.heappush(self.ready, (-record["priority"], seq, record["id"]))
            counts[0] += 1

    def promote_due(self, now):
        """Move deferred entries whose run_after has come into the ready heap."""
        deferred, dropped = self.deferred, self.dropped
        while deferred and deferred[0][0] <= now:
            _, seq, task_id = heapq.heappop(deferred)
            if seq in dropped:  # left the queue while deferred
                dropped.discard(seq)
                continue
            record = self.records[task_id]
            heapq.heappush(self.ready, (-record["priority"], seq, task_id))
            counts = self.by_queue[record["queue"]]
            counts[1] -= 1
            counts[0] += 1

    def pop(self, now):
        """The READY record to run next (out of the queue now), or None."""
        ready, dropped = self.ready, self.dropped
        self.promote_due(now)
        while ready:
            _, seq, task_id = heapq.heappop(ready)
            if seq in dropped:  # left the queue while pending (a cancel)
                dropped.discard(seq)
                continue
            record = self.records[task_id]
            self.by_queue[record["queue"]][0] -= 1
            return record
        return None

    def drop(self, record, now):
        """Take a READY record out of the queue; its heap entry is skipped when popped.

        Due deferred entries are promoted first, so the record is in the deferred heap exactly
        when its run_after is still in the future."""
        self.promote_due(now)
        deferred = record["run_after"] is not None and record["run_after"] > now
        self.by_queue[record["queue"]][1 if deferred else 0] -= 1
        self.dropped.add(record["seq"])

    def next_due(self):
        """The earliest run_after of a deferred task (time.time()), or None."""
        deferred = self.deferred
        return deferred[0][0] if deferred else None

    def counts(self):
        """{queue: {"ready": n, "deferred": n}} for health."""
        return {q: {"ready": c[0], "deferred": c[1]} for q, c in sorted(self.by_queue.items())}

    def load(self, pending, now):
        """Take over restored READY records (a STATE_DIR start): each keeps its `seq`."""
        later = [r for r in pending if r["run_after"] is not None and r["run_after"] > now]
        due = [r for r in pending if r["run_after"] is None or r["run_after"] <= now]
        self.deferred = [(r["run_after"], r.get("seq", 0), r["id"]) for r in later]
        self.ready = [(-r["priority"], r.get("seq", 0), r["id"]) for r in due]
        heapq.heapify(self.ready)
        heapq.heapify(self.deferred)
        for queue, n in Counter(r["queue"] for r in due).items():
            self.by_queue.setdefault(queue, [0, 0])[0] += n
        for queue, n in Counter(r["queue"] for r in later).items():
            self.by_queue.setdefault(queue, [0, 0])[1] += n

    def continue_after(self, top):
        """New positions after `top`, the highest seq restored."""
        self._seq = itertools.count(top + 1)
