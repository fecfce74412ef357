"""TaskStore methods behind cancel, the web page and the metrics (a mixin of TaskStore).

    cancel(id) ── READY ───> FAILED TaskCancelled at once; its heap entry is dropped lazily
              │              (seq in _dropped: skipped when popped, not counted as pending)
              └─ RUNNING ──> FAILED TaskCancelled at once (a late report of its worker is
                             ignored), the worker takes no new task (retiring), and a kill
                             request for the supervisor, whose thread is woken (on_kill):
                             Supervisor.end_task stops the worker; siblings end WorkerLost
    results(filters, offset, limit) ── newest finished first, from _orders: one deque of
                             (id, finished_at, status, queue, task) for all finished tasks and
                             one per status, so "FAILED only" walks failures alone and filters
                             compare plain strings without touching the records
    overview(filters) ── health() + history + one page of results: ONE round trip per refresh
    sample_history() <── the supervisor tick (history.py decides the sampling rate)

Everything here runs under the store's one lock, like store.py, and changes records only through
the journal hooks (_log_set, _finished_record).
"""

from collections import deque
from operator import itemgetter

from .history import DURATION_BUCKETS, WAIT_BUCKETS, Histogram, History
from .status import FAILED, FINISHED, READY, SUCCESSFUL

CANCELLED = "django_tasks_shared.exceptions.TaskCancelled"
MAX_PAGE = 200  # rows per results page


class WebStoreMixin:
    def _init_web(self):
        self._dropped = set()           # seq of heap entries whose task was cancelled
        # None / "FAILED" / "SUCCESSFUL" -> deque of (id, finished_at, status, queue, task) in
        # finishing order; evicted or re-finished entries linger until skipped or compacted.
        self._orders = {None: deque(), FAILED: deque(), SUCCESSFUL: deque()}
        self._kills = []                # (worker id, task id, text) for the supervisor
        self.on_kill = None             # set by the supervisor: wakes its thread
        self.durations = Histogram(DURATION_BUCKETS)
        self.waits = Histogram(WAIT_BUCKETS)
        self.history = History()

    # ---- client operations (exposed over the manager) -------------------------------------

    def cancel(self, task_id):
        """End a pending or running task FAILED with TaskCancelled. False if it is finished or
        unknown (nothing changes). Exactly one outcome: a running task is failed here, under the
        lock, so its worker's later report (or a time limit) finds it no longer running."""
        with self._lock:
            record = self._records.get(task_id)
            if record is None or record["status"] in FINISHED:
                return False
            if record["status"] == READY:
                now = self._clock()
                self._drop_pending(record, now)
                record.update(status=FAILED, finished_at=now, errors=record["errors"] + [{
                    "exception_class_path": CANCELLED,
                    "traceback": f"{CANCELLED}: task {task_id} was cancelled before it ran\n"}])
                self._log_set(record, "status", "finished_at", "errors")
                self.counters["failed"] += 1
                self.counters["cancelled"] += 1
                self._finished_record(task_id, now)
                return True
            worker_id = self._running.get(task_id)
            if worker_id is None:
                return False
            worker = self._workers.get(worker_id)
            pid = worker["pid"] if worker is not None else "?"
            text = (f"{CANCELLED}: task {task_id} was cancelled while running; its worker "
                    f"{worker_id} (pid {pid}) was stopped\n")
            self._fail(task_id, CANCELLED, text)
            if worker is not None and not worker["retiring"]:
                # Until the supervisor's signal lands, the worker must not claim another task.
                worker["retiring"] = True
                worker["retire_reason"] = f"stopped: task {task_id} was cancelled"
                self._notify_work(everyone=True)
            self._kills.append((worker_id, task_id, text))
        if self.on_kill is not None:
            self.on_kill()
        return True

    def results(self, status=None, task=None, queue=None, offset=0, limit=25):
        """A page of finished results, newest first: {"rows", "offset", "limit", "more"}.

        `task` matches a substring of the task path; `status` and `queue` match exactly. Stops
        scanning once the page and one more match are found, so an unfiltered page costs
        O(offset + limit); a filter that matches little scans the stored results once."""
        offset, limit = max(0, int(offset)), max(1, min(int(limit), MAX_PAGE))
        with self._lock:
            self._expire(self._clock())
            rows, matched = [], 0
            records = self._records
            order = self._orders[status if status in self._orders else None]
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
        return {"health": self.health(), "history": self.history_snapshot(),
                "results": self.results(status, task, queue, offset, limit)}

    # ---- supervisor operations (same process, never exposed) -------------------------------

    def take_kills(self):
        """The kill requests of running tasks cancelled since the last call."""
        with self._lock:
            kills, self._kills = self._kills, []
            return kills

    def sample_history(self):
        with self._lock:
            c = self.counters
            return self.history.sample(
                self._clock(), c["succeeded"] + c["failed"],
                {wid: (w["rss_bytes"], w["cpu_percent"]) for wid, w in self._workers.items()})

    def history_snapshot(self):
        with self._lock:
            return self.history.snapshot()

    def rebuild_finish_order(self):
        with self._lock:
            self._rebuild_finish_order()

    # ---- internals (lock held) ---------------------------------------------------------------

    def _drop_pending(self, record, now):
        """Take a READY record out of the pending counts; its heap entry is skipped when popped.

        Due deferred entries are promoted first, so the record is in the deferred heap exactly
        when its run_after is still in the future."""
        self._promote_due(now)
        deferred = record["run_after"] is not None and record["run_after"] > now
        self._pending_by_queue[record["queue"]][1 if deferred else 0] -= 1
        self._dropped.add(record["seq"])

    def _rebuild_finish_order(self):
        """After finished records were loaded without _finished_record (a state restore, see
        TaskStore.load): the listing's finish orders, from their finished_at."""
        records = self._records
        finished = sorted((r for i in self._finished if (r := records.get(i)) is not None),
                          key=itemgetter("finished_at"))
        # The same entries _note_order makes, built in bulk: start-up time counts here.
        entries = [(r["id"], r["finished_at"], r["status"], r["queue"], r["task"])
                   for r in finished]
        self._orders = {None: deque(entries),
                        FAILED: deque([e for e in entries if e[2] == FAILED]),
                        SUCCESSFUL: deque([e for e in entries if e[2] == SUCCESSFUL])}

    def _note_finished(self, record):
        """Called by _finished_record for every task that ends (O(1) amortised)."""
        if record["started_at"] is not None:
            self.durations.observe(record["finished_at"] - record["started_at"])
        self._note_order(record)

    def _note_order(self, record):
        entry = (record["id"], record["finished_at"], record["status"], record["queue"],
                 record["task"])
        for key in (None, record["status"]):
            order = self._orders[key]
            if len(order) > 2 * self.max_results + 64:
                # Evicted and expired ids linger here; drop them in one pass every max_results
                # finishes or so, which keeps the deque bounded and the cost amortised O(1).
                order = self._orders[key] = deque(e for e in order if e[0] in self._finished)
            order.append(entry)


def _summary(record):
    errors = record["errors"]
    started, finished = record["started_at"], record["finished_at"]
    return {
        "id": record["id"], "task": record["task"], "queue": record["queue"],
        "status": record["status"], "priority": record["priority"],
        "enqueued_at": record["enqueued_at"], "started_at": started, "finished_at": finished,
        "duration": None if started is None else round(finished - started, 6),
        "error": errors[-1]["exception_class_path"].rsplit(".", 1)[-1] if errors else None,
        "worker": record["worker_ids"][-1] if record["worker_ids"] else None,
    }
