"""enqueue_many (client/bulk.py): a call's chunks staged, then stored all at once or not at all.

    enqueue_many(records, batch, index, final)  one round trip per chunk of a call
        not final: staged under `batch` (nothing stored, nothing visible); a chunk sent again
                   (a retried call) replaces itself; a call whose chunks stop coming is
                   dropped after STAGE_TTL
        final:     every staged chunk + this one, checked as a whole, under ONE lock hold:
                   a draining server, a STATE_DIR that refuses writes, no room under MAX_QUEUE
                   for all of them -> the error, and nothing stored
                   else each record as enqueue() / enqueue_workflow() stores it (idempotent per
                   id), and the list of what stands for each: its enqueued_at, or for a
                   @unique / @limit record the record that stands for it
        the final answer is kept for a while (DONE_KEPT calls): the same final chunk sent again
        after a lost reply gets the same answer instead of a "missing chunk" error

The last chunk's lock hold is O(records of the call): about 8-15 us each (docs/architecture.md
has the figure), which other clients wait out; the client keeps chunks at 500 records.
"""

from collections import OrderedDict

from ..exceptions import QueueFull, ServerUnavailable

STAGE_TTL = 120.0   # seconds a call's staged chunks wait for the next one
DONE_KEPT = 64      # final answers kept for a repeated final chunk


class Bulk:
    def __init__(self, store):
        self.store = store
        self.staged: dict[str, list] = {}  # batch -> [deadline, [chunk, ...]]
        self.done: OrderedDict[str, list] = OrderedDict()  # batch -> the final answer

    def enqueue_many(self, records, batch, index, final):
        store = self.store
        with store.lock:
            now = store.clock()
            for key in [k for k, v in self.staged.items() if v[0] < now]:
                del self.staged[key]
            if batch in self.done:  # sent again after a lost reply: the same answer, once
                store.journal.depend()  # what it acknowledges is durable
                return self.done[batch] if final else None
            staged = self.staged.get(batch)
            if index == 0:
                staged = self.staged[batch] = [now + STAGE_TTL, []]
            if staged is None or index > len(staged[1]):
                raise ValueError(
                    f"enqueue_many: chunk {index} of call {batch} came without the chunks "
                    f"before it (dropped after {STAGE_TTL:g} s, or the server restarted); "
                    f"nothing of the call was stored. Call enqueue_many again.")
            staged[0] = now + STAGE_TTL
            del staged[1][index:]
            staged[1].append(records)
            if not final:
                return None
            del self.staged[batch]
            answer = self._store([r for chunk in staged[1] for r in chunk])
            self.done[batch] = answer
            while len(self.done) > DONE_KEPT:
                self.done.popitem(last=False)
            return answer

    def _store(self, records):
        """Lock held: all of `records` or nothing."""
        store = self.store
        store.journal.check()  # a STATE_DIR that cannot be written: refused, nothing changes
        fresh = sum(r["id"] not in store.records for r in records)
        if fresh and store.draining:
            raise ServerUnavailable(
                f"the task server (pid {store.meta['pid']}) is shutting down and takes no new "
                f"tasks; none of the {len(records)} tasks of this enqueue_many was stored. "
                f"Retry once it is back.")
        if store.max_queue is not None and fresh and \
                store.pending_count() + fresh > store.max_queue:
            store.counters["rejected_full"] += 1
            raise QueueFull(
                f"the task queue holds {store.pending_count()} pending tasks: the {fresh} new "
                f"tasks of this enqueue_many do not fit under MAX_QUEUE={store.max_queue}; "
                f"none was stored. Enqueue fewer at once, retry later, add WORKERS, or raise "
                f"MAX_QUEUE.")
        flows = store.flows
        for record in records:  # (the client sends none: after() enqueues one task)
            if record.get("after"):
                flows.deps.check(record["after"])  # UnknownDependency before anything is stored
        answer = []
        for record in records:
            if "unique" in record or "limit" in record or "after" in record:
                answer.append(flows.enqueue_locked(record))
            else:
                answer.append(store.enqueue_locked(record))
        return answer
