"""Concurrency and rate limits (`@limit`), exact under the store's lock, in O(log n) per claim.

    record["limit"] = {"key", "concurrency", "rate": [n, seconds]}  (computed by the client)

    PendingQueue.push / promote (a due limited task) ──add()──> its key's sub-queue for its
        queue: a heap of (-priority, seq, id). Only the best task of each sub-queue, a HEAD, is
        in the ready heap of that queue, as (-priority, seq, id, key, queue), and only while
        the key has a free slot: a claim never sees, let alone scans, the tasks a limit holds
        back, and a pool serving one queue is never stuck behind a head in another.
    claim: PendingQueue.pop takes a head ──popped()──> out of the sub-queue
           TaskStore._start ──take(record, now)──> running += 1, a start in the rate window;
                 the next head of that queue offered if a slot is still free, else every head
                 of the key withdrawn (their entries go stale)
    the task ends in ANY way (finish, fail, retry, cancel, WorkerLost, TimeLimitExceeded...)
           TaskStore ──release(record, now)──> running -= 1; heads offered again -> True
                                               (the store then wakes the parked claims)
    rate window full ──> a timer at the time its oldest counted start leaves the window;
           PendingQueue.promote_due ──due(now)──> heads offered again; next_due() tells the
           event loop when to retry its parked claims (server/dispatch.py deadline())

The claim rules (docs/architecture.md, "Claims"): `may_start(state, now)` is the only test,
`take` the only way a slot is held, `release` the only way it is freed; a batch claim (prefetch)
calls pop + take N times, and a reserved task holds its slot until release.

A head entry is valid while `state.heads[queue] is entry` (identity): a newer, better head, a
cancel or a full key leaves the old entry in the ready heap, skipped when it reaches the top
(lazy, so amortised O(log n)). The spec (concurrency, rate) of a key is the one of its latest
task queued. No lock of its own: the store's lock is held by every caller.
"""

import heapq
from collections import deque


class KeyState:
    __slots__ = ("key", "heaps", "heads", "running", "starts", "concurrency", "rate", "timer",
                 "dropped")

    def __init__(self, key):
        self.key = key
        # queue name -> heap of (-priority, seq, id): the key's due READY tasks of that queue
        self.heaps: dict[str, list[tuple]] = {}
        # queue name -> the entry offered in that queue's ready heap (absent: none offered)
        self.heads: dict[str, tuple] = {}
        self.running = 0                # slots held: RUNNING (or reserved) tasks of the key
        self.starts: deque[float] = deque()  # start times inside the rate window
        self.concurrency = None
        self.rate = None                # [n, seconds]
        self.timer = None               # when a rate slot frees (armed in Limits.timers)
        self.dropped: set[int] = set()  # seq of cancelled tasks still in a heap (lazy removal)


class Limits:
    def __init__(self, queue):
        self.queue = queue              # the PendingQueue: offer() pushes into its ready heaps
        self.keys: dict[str, KeyState] = {}
        self.timers: list[tuple[float, str]] = []  # heap of (time a rate slot frees, key)

    def __len__(self):
        return len(self.keys)

    # ---- the claim rules -------------------------------------------------------------------

    def may_start(self, state, now):
        """Can a task of this key start now (a free concurrency slot and room in the rate
        window)? When the window is full, a timer is armed for the moment it frees."""
        if state.concurrency is not None and state.running >= state.concurrency:
            return False
        rate = state.rate
        if rate is not None:
            n, period = rate
            starts = state.starts
            while starts and starts[0] <= now - period:
                starts.popleft()
            if len(starts) >= n:
                self._arm(state, starts[len(starts) - int(n)] + period)
                return False
        return True

    def take(self, record, now):
        """A task of the key starts (or is reserved): it holds a slot until release(). The
        key's next task of the same queue is offered if a slot is still free; if none is, the
        heads offered in other queues are withdrawn (their entries go stale)."""
        state = self.keys[record["limit"]["key"]]
        state.running += 1
        if state.rate is not None:
            state.starts.append(now)
        if self.may_start(state, now):
            self._offer(state, record["queue"], now)
        else:
            state.heads.clear()

    def release(self, record, now):
        """A task that held a slot ended (any way) or went back to the queue: True when a head
        of the key became ready (the caller wakes the parked claims)."""
        state = self.keys.get(record["limit"]["key"])
        if state is None:
            return False
        state.running = max(0, state.running - 1)
        offered = self.offer(state, now)
        self._forget_if_idle(state)
        return offered

    # ---- the key's sub-queues (PendingQueue calls these) -----------------------------------

    def add(self, record, now):
        """A due limited READY task joins its key's sub-queue of its queue; True if it became
        a head."""
        spec = record["limit"]
        key = spec["key"]
        state = self.keys.get(key)
        if state is None:
            state = self.keys[key] = KeyState(key)
        state.concurrency, state.rate = spec.get("concurrency"), spec.get("rate")
        queue = record["queue"]
        heap = state.heaps.get(queue)
        if heap is None:
            heap = state.heaps[queue] = []
        entry = (-record["priority"], record["seq"], record["id"])
        heapq.heappush(heap, entry)
        head = state.heads.get(queue)
        if head is None or entry < head:
            return self._offer(state, queue, now)
        return False

    def valid(self, entry):
        """Is this entry of a ready heap, (-priority, seq, id, key, queue), the current head of
        its key in its queue?"""
        state = self.keys.get(entry[3])
        return state is not None and state.heads.get(entry[4]) is entry

    def popped(self, entry):
        """The head `entry` was taken by a claim: out of the sub-queue (take() follows)."""
        state = self.keys[entry[3]]
        del state.heads[entry[4]]
        top = heapq.heappop(state.heaps[entry[4]])
        assert top[1] == entry[1], "a key's head is the top of its sub-queue"

    def drop(self, record, now):
        """A due limited READY task left the queue (a cancel): lazily out of the sub-queue."""
        state = self.keys.get(record["limit"]["key"])
        if state is None:
            return
        seq, queue = record["seq"], record["queue"]
        state.dropped.add(seq)
        head = state.heads.get(queue)
        if head is not None and head[1] == seq:
            del state.heads[queue]
            self._offer(state, queue, now)
        else:
            self._clean(state, queue)
        self._forget_if_idle(state)

    def offer(self, state, now):
        """Offer the key's best task of each of its queues, if the key may start one now."""
        offered = False
        for queue in list(state.heaps):
            if self._offer(state, queue, now):
                offered = True
        return offered

    def _clean(self, state, queue):
        """The sub-queue's top, cancelled entries popped; None (and the heap gone) if empty."""
        heap, dropped = state.heaps[queue], state.dropped
        while heap and heap[0][1] in dropped:
            dropped.discard(heapq.heappop(heap)[1])
        if heap:
            return heap[0]
        del state.heaps[queue]
        state.heads.pop(queue, None)
        return None

    def _offer(self, state, queue, now):
        """Put the key's best task of `queue` in that queue's ready heap if the key may start
        one now and it is not there yet. True when a new head was offered."""
        if queue not in state.heaps:
            return False
        top = self._clean(state, queue)
        if top is None:
            return False
        head = state.heads.get(queue)
        if head is not None and head[1] == top[1]:
            return False  # offered already
        if not self.may_start(state, now):
            state.heads.clear()
            return False
        head = (*top, state.key, queue)
        state.heads[queue] = head
        heapq.heappush(self.queue.ready_heap(queue), head)
        return True

    # ---- rate timers -----------------------------------------------------------------------

    def _arm(self, state, when):
        if state.timer is None or when < state.timer:
            state.timer = when
            heapq.heappush(self.timers, (when, state.key))

    def next_due(self):
        return self.timers[0][0] if self.timers else None

    def due(self, now):
        """Rate windows that freed a slot by `now`: their heads offered. True if any was."""
        timers, any_offered = self.timers, False
        while timers and timers[0][0] <= now:
            when, key = heapq.heappop(timers)
            state = self.keys.get(key)
            if state is None or state.timer != when:
                continue  # re-armed earlier, or forgotten
            state.timer = None
            if self.offer(state, now):
                any_offered = True
            self._forget_if_idle(state, now)
        return any_offered

    def _forget_if_idle(self, state, now=None):
        """Drop the state of a key with nothing queued, running or counted: keys such as
        "per shop" come and go. A rate window still counting starts keeps it, with a timer to
        look again when the window has passed."""
        if state.heaps or state.running:
            return
        if state.starts and state.rate is not None:
            if now is not None:
                period = state.rate[1]
                while state.starts and state.starts[0] <= now - period:
                    state.starts.popleft()
            if state.starts:
                self._arm(state, state.starts[-1] + state.rate[1])
                return
        key = state.key
        if self.keys.get(key) is state:
            del self.keys[key]

    # ---- restore and health ----------------------------------------------------------------

    def rebuild(self, records, now, notes=None):
        """After a STATE_DIR restore, before the pending tasks are loaded: each key's running
        count (its RUNNING records, which end WorkerLost next and release their slot) and its
        rate window (the starts of its records within the window, and `notes`: key -> starts
        of records evicted meanwhile, see workflows.py)."""
        for record in records:
            spec = record.get("limit")
            if spec is None:
                continue
            state = self.keys.get(spec["key"])
            if state is None:
                state = self.keys[spec["key"]] = KeyState(spec["key"])
                state.concurrency, state.rate = spec.get("concurrency"), spec.get("rate")
            if record["status"] == "RUNNING":
                state.running += 1
            rate = spec.get("rate")
            started = record["last_attempted_at"]  # this (or the last) attempt's start
            if rate is not None and started is not None and started > now - rate[1]:
                state.starts.append(started)
            for started in record.get("limit_starts") or ():  # earlier attempts (retries)
                if rate is not None and started > now - rate[1]:
                    state.starts.append(started)
        for key, note in (notes or {}).items():
            state = self.keys.get(key)
            if state is None:
                state = self.keys[key] = KeyState(key)
                state.rate = note["rate"]
            period = note["rate"][1]
            state.starts.extend(t for t in note["starts"] if t > now - period)
        for state in list(self.keys.values()):
            state.starts = deque(sorted(state.starts))
            self._forget_if_idle(state, now)

    def report(self, now, top=20):
        """For health: how many keys, and the busiest ones (most waiting first)."""
        rows = []
        def waiting(state):
            return sum(len(heap) for heap in state.heaps.values()) - len(state.dropped)

        for state in sorted(self.keys.values(), key=lambda s: (-waiting(s), -s.running))[:top]:
            rate = state.rate
            if rate is not None:
                while state.starts and state.starts[0] <= now - rate[1]:
                    state.starts.popleft()
            rows.append({"key": state.key, "concurrency": state.concurrency,
                         "rate": rate, "running": state.running,
                         "waiting": waiting(state),
                         "starts_in_window": len(state.starts) if rate is not None else None,
                         "next_slot_at": state.timer})
        return {"keys": len(self.keys), "busiest": rows}
