"""The finished results the store keeps: at most MAX_RESULTS, least recently used out first, and
none older than RESULT_TTL.

    TaskStore: a task ended ──add(id, finished_at)──> LRU (OrderedDict) [+ expiry deque, TTL]
                                                      └──> ids evicted past MAX_RESULTS
               get(id) of a finished task ──touch(id)──> most recently used
               health / listing / sweep ──expired(now, records)──> ids past RESULT_TTL

               a pinned id (a dependent still needs it, store/dependencies.py) out of the LRU
               ──hold(id)──> `held`: kept, counted, not evicted nor expired; unhold(id) puts it
               back as the most recently used once the pin goes

Ids only: the records stay in the store's dict, which the caller cleans. No lock of its own:
TaskStore calls it with the store lock held.

The expiry deque gets one entry per finish, and an id evicted past MAX_RESULTS (or removed)
leaves its entry behind until RESULT_TTL passes: with MAX_RESULTS=100 and a long TTL that was
every task ever finished (200,000 tasks: +32 MB). So once it holds more than
2 x MAX_RESULTS + COMPACT_SLACK entries, it is rebuilt from the ids still kept (one pass;
amortised O(1) per finish, as at least MAX_RESULTS + COMPACT_SLACK finishes come between two).
"""

from collections import OrderedDict, deque
from itertools import chain

COMPACT_SLACK = 64  # expiry entries beyond 2 x MAX_RESULTS before the deque is compacted


class FinishedResults:
    def __init__(self, max_results, ttl=None):
        self.max_results = max_results
        self.ttl = ttl
        self.lru: OrderedDict[str, None] = OrderedDict()  # id -> None, least recently used first
        # (finished_at, id) in finishing order, for RESULT_TTL
        self.expiry: deque[tuple[float, str]] = deque()
        self.held: set[str] = set()  # pinned ids taken out of the LRU (see hold)

    def __len__(self):
        return len(self.lru) + len(self.held)

    def __contains__(self, task_id):
        return task_id in self.lru or task_id in self.held

    def __iter__(self):
        return chain(self.lru, self.held) if self.held else iter(self.lru)

    def add(self, task_id, finished_at):
        """A task ended: returns the ids evicted to stay within max_results."""
        self.lru[task_id] = None
        if self.ttl is not None:
            self.expiry.append((finished_at, task_id))
        evicted = []
        while len(self.lru) > self.max_results:
            evicted.append(self.lru.popitem(last=False)[0])
        if len(self.expiry) > 2 * self.max_results + COMPACT_SLACK:
            self._compact()
        return evicted

    def _compact(self):
        """Keep only the expiry entries of ids still kept, the latest one of each, in order."""
        lru, seen, kept = self.lru, set(), []
        for entry in reversed(self.expiry):
            task_id = entry[1]
            if task_id in lru and task_id not in seen:
                seen.add(task_id)
                kept.append(entry)
        kept.reverse()
        self.expiry = deque(kept)

    def touch(self, task_id):
        if task_id in self.lru:  # not a held one
            self.lru.move_to_end(task_id)

    def remove(self, task_id):
        self.lru.pop(task_id, None)
        self.held.discard(task_id)

    def hold(self, task_id):
        """Keep an id that add() evicted or expired() returned: it is pinned."""
        self.lru.pop(task_id, None)
        self.held.add(task_id)

    def unhold(self, task_id, finished_at):
        """The pin is gone: the id is an ordinary result again (the most recently used);
        returns the ids evicted to stay within max_results. Not held: nothing happens."""
        if task_id not in self.held:
            return []
        self.held.discard(task_id)
        return self.add(task_id, finished_at)

    def is_expired(self, record, now):
        return self.ttl is not None and record["finished_at"] + self.ttl <= now

    def expired(self, now, records):
        """Pop and return the ids past RESULT_TTL (skipping entries of records gone or
        finished again since: a retried task's earlier finish)."""
        if self.ttl is None:
            return []
        expiry, ttl, gone = self.expiry, self.ttl, []
        while expiry and expiry[0][0] + ttl <= now:
            finished_at, task_id = expiry.popleft()
            record = records.get(task_id)
            if record is not None and record["finished_at"] == finished_at:
                gone.append(task_id)
        return gone

    def load(self, ids, records):
        """Take over restored finished ids, in LRU order."""
        self.lru = OrderedDict.fromkeys(ids)
        if self.ttl is not None:
            self.expiry.extend(sorted((records[i]["finished_at"], i) for i in self.lru))
