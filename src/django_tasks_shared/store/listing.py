"""The finished results as the web page lists them, and the page's one-round-trip overview.

    TaskStore: a task ended ──note(record)──> orders: one deque of (id, finished_at, status,
                                              queue, task) for all finished tasks, and one per
                                              status, in finishing order
    results(filters, offset, limit) ── newest first: "FAILED only" walks failures alone, and
                                       filters compare plain strings without touching records
    overview(filters) ── health() + history + one page of results: ONE round trip per refresh

Evicted, expired and re-finished (retried) entries linger in the deques until skipped or
compacted (amortised O(1) per finish). Runs under the store's lock, like the store's own code.
"""

from collections import deque
from operator import itemgetter

from ..protocol.status import FAILED, SUCCESSFUL

MAX_PAGE = 200  # rows per results page


class Listing:
    def __init__(self, store):
        self.store = store
        # None / "FAILED" / "SUCCESSFUL" -> deque of (id, finished_at, status, queue, task)
        self.orders: dict[str | None, deque] = {None: deque(), FAILED: deque(),
                                                SUCCESSFUL: deque()}

    # ---- client operations (exposed) ---------------------------------------------------------

    def results(self, status=None, task=None, queue=None, offset=0, limit=25):
        """A page of finished results, newest first: {"rows", "offset", "limit", "more"}.

        `task` matches a substring of the task path; `status` and `queue` match exactly. Stops
        scanning once the page and one more match are found, so an unfiltered page costs
        O(offset + limit); a filter that matches little scans the stored results once."""
        offset, limit = max(0, int(offset)), max(1, min(int(limit), MAX_PAGE))
        store = self.store
        with store.lock:
            store.expire()
            rows: list[dict] = []
            matched = 0
            records = store.records
            order = self.orders[status if status in self.orders else None]
            for task_id, finished_at, done_as, in_queue, path in reversed(order):
                if (status and done_as != status) or (queue and in_queue != queue) or \
                        (task and task not in path):
                    continue
                record = records.get(task_id)
                # Gone (evicted, expired), or re-queued and finished again later (a retry):
                # only the entry of its latest finish lists it.
                if record is None or record["finished_at"] != finished_at or \
                        record["status"] != done_as:
                    continue
                if matched >= offset + limit:
                    return {"rows": rows, "offset": offset, "limit": limit, "more": True}
                if matched >= offset:
                    rows.append(_summary(record))
                matched += 1
            return {"rows": rows, "offset": offset, "limit": limit, "more": False}

    def overview(self, status=None, task=None, queue=None, offset=0, limit=25):
        """Everything the web page shows, in one round trip."""
        return {"health": self.store.health(), "history": self.store.history_snapshot(),
                "results": self.results(status, task, queue, offset, limit)}

    # ---- the store's hooks (lock held) -------------------------------------------------------

    def note(self, record):
        """A task ended (O(1) amortised)."""
        entry = (record["id"], record["finished_at"], record["status"], record["queue"],
                 record["task"])
        finished = self.store.finished
        for key in (None, record["status"]):
            order = self.orders[key]
            if len(order) > 2 * finished.max_results + 64:
                # Evicted and expired ids linger here; drop them in one pass every max_results
                # finishes or so, which keeps the deque bounded and the cost amortised O(1).
                order = self.orders[key] = deque(e for e in order if e[0] in finished)
            order.append(entry)

    def rebuild(self):
        """After finished records were restored in bulk (a STATE_DIR start): the orders, from
        their finished_at."""
        records = self.store.records
        finished = sorted((r for i in self.store.finished if (r := records.get(i)) is not None),
                          key=itemgetter("finished_at"))
        # The same entries note() makes, built in bulk: start-up time counts here.
        entries = [(r["id"], r["finished_at"], r["status"], r["queue"], r["task"])
                   for r in finished]
        self.orders = {None: deque(entries),
                       FAILED: deque([e for e in entries if e[2] == FAILED]),
                       SUCCESSFUL: deque([e for e in entries if e[2] == SUCCESSFUL])}


def _summary(record):
    errors = record["errors"]
    # "duration": how long the last attempt ran (started_at is the first attempt's start).
    started, finished = record["last_attempted_at"], record["finished_at"]
    return {
        "id": record["id"], "task": record["task"], "queue": record["queue"],
        "status": record["status"], "priority": record["priority"],
        "enqueued_at": record["enqueued_at"], "started_at": record["started_at"],
        "finished_at": finished,
        "duration": None if started is None else round(finished - started, 6),
        "error": errors[-1]["exception_class_path"].rsplit(".", 1)[-1] if errors else None,
        "worker": record["worker_ids"][-1] if record["worker_ids"] else None,
        # The page tells "succeeded on attempt 2" from a failure (a 0.1.0 server sends no
        # "attempts": the page then says less).
        "attempts": len(record["worker_ids"]),
    }
