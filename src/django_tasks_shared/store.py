"""TaskStore: the pending queue, the running set and the LRU of results, in one process.

Plain, thread-safe Python with no IPC and no Django: the server registers ONE instance on its
manager, so every method below that clients call is one socket round trip.

    enqueue(record) ──> deferred heap (run_after, seq, id) ──due──┐
                    └─> ready heap (-priority, seq, id) <─────────┘
    finish_and_claim(worker, outcome) ──pop ready──> record RUNNING, owned by worker
    (wait and finish_and_claim, blocking or parked by the event loop: store_longpoll.py)
                                      <─outcome───── SUCCESSFUL / FAILED ──> finished LRU
    get(id) / wait(id) ──> record copy (a hit refreshes LRU recency)
    supervisor (same process): register_worker, worker_exited, fail_task, overdue, retire...

A failed attempt that the retry policy (record["retry"], see retries.py) gives another try goes
back to READY with the same id, due after its back-off: `_retry` instead of the finished LRU.
`save_metadata` merges a running task's progress into record["metadata"] (Django's
`raw_metadata` shape; see metadata.py).

With a STATE_DIR, every change is also journaled (persistence.py: the _log_* hooks, called right
after the change, under the lock).

Records are JSON-compatible dicts (see `new_record`). Inner lists are replaced, never mutated,
so a shallow copy handed to the pickler can never change under it. Timestamps are `time.time()`
floats taken in this process (or reported by a worker on the same host), so
enqueued_at <= started_at <= finished_at holds across processes.
"""

import heapq
import itertools
import os
import threading
import time
from collections import OrderedDict, deque

from .exceptions import QueueFull, ServerUnavailable
from .persistence import JournaledStore
from .retries import backoff, retries_supervisor_end
from .status import FAILED, FINISHED, READY, RUNNING, STOP, SUCCESSFUL, WORKER_LOST  # noqa: F401
from .store_longpoll import LongPollMixin
from .store_schedules import ScheduleStateMixin
from .store_web import WebStoreMixin

# (The statuses are re-exported: worker, backend and the tests import them from here.)


def new_record(
    *, id, task, args, kwargs, priority=0, queue="default", run_after=None,
    takes_context=False, backend="default", retry=None,
):
    """The record a client sends to `enqueue`. "retry" (the policy, see retries.py) and
    "metadata" (progress) are added only when there is one: most records have neither, and every
    key costs at a STATE_DIR restore."""
    record = {
        "id": id, "task": task, "args": args, "kwargs": kwargs, "priority": priority,
        "queue": queue, "run_after": run_after, "takes_context": takes_context,
        "backend": backend, "status": READY, "enqueued_at": None, "started_at": None,
        "last_attempted_at": None, "finished_at": None, "return_value": None,
        "errors": [], "worker_ids": [],
    }
    if retry is not None:
        record["retry"] = retry
    return record


class TaskStore(JournaledStore, LongPollMixin, ScheduleStateMixin, WebStoreMixin):
    def __init__(self, *, max_results=1000, result_ttl=None, max_queue=None,
                 max_tasks_per_worker=None, clock=time.time):
        self.max_results = max_results
        self.result_ttl = result_ttl
        self.max_queue = max_queue
        self.max_tasks_per_worker = max_tasks_per_worker
        self._clock = clock
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # signalled when a task becomes ready
        self._seq = itertools.count()
        self._records = {}              # id -> record (pending, running and finished)
        self._ready = []                # heap of (-priority, seq, id)
        self._deferred = []             # heap of (run_after, seq, id)
        self._finished = OrderedDict()  # id -> None, least recently used first
        self._expiry = deque()          # (finished_at, id) in finishing order, for RESULT_TTL
        self._running = {}              # id -> worker id
        self._pending_by_queue = {}     # queue -> [ready, deferred]
        self._workers = {}              # worker id -> info dict (see register_worker)
        self._draining = False
        self._journal = None            # a journal.Journal once a STATE_DIR is attached
        self._checkpointed = None       # the counters as last journaled
        self.state_health = None        # STATE_DIR facts for health (a callable), if any
        self.on_reload = None           # the supervisor's request_reload, once it runs
        # Small server state outside the records that must survive restarts (e.g. the last run
        # of each schedule): change it under the lock, then call _log_durable(key).
        self.durable = {}
        self._schedules = {}            # schedule name -> info for health (scheduler.py)
        self.meta = {"pid": os.getpid(), "started_at": clock()}
        self.counters = dict.fromkeys(
            ("enqueued", "succeeded", "failed", "worker_lost", "timed_out", "evicted",
             "expired", "rejected_full", "worker_restarts", "retried", "memory_exceeded",
             "cancelled"), 0)
        self._init_web()  # cancel bookkeeping, histograms, history (store_web.py)
        self._init_longpoll()  # wait/claim waiters, the event loop's hook (store_longpoll.py)

    # ---- client operations (exposed over the manager) -------------------------------------

    def enqueue(self, record):
        """Store a READY record; returns its server-side `enqueued_at`. Idempotent per id."""
        with self._lock:
            return self._enqueue(record)

    def get(self, task_id):
        """The record, or None if unknown, evicted or expired."""
        with self._lock:
            record = self._lookup(task_id)
            return None if record is None else dict(record)

    def get_many(self, task_ids):
        with self._lock:
            return [None if (r := self._lookup(i)) is None else dict(r) for i in task_ids]

    def save_metadata(self, task_id, fields, replace=False):
        """Merge `fields` into a RUNNING task's metadata (or replace it with them); False when
        the task is unknown or not running any more (finished, or ended by the supervisor)."""
        with self._lock:
            record = self._records.get(task_id)
            if record is None or record["status"] != RUNNING:
                return False
            record["metadata"] = dict(fields) if replace else \
                {**(record.get("metadata") or {}), **fields}
            self._log_set(record, "metadata")
            return True

    def metadata(self, task_id):
        """(status, metadata) of a task, or None if unknown, evicted or expired."""
        with self._lock:
            record = self._lookup(task_id)
            return None if record is None else (record["status"], record.get("metadata") or {})

    def worker_failed(self, worker_id, reason):
        """A worker reports why it cannot start (bad settings, import error) before exiting."""
        with self._lock:
            if worker_id in self._workers:
                self._workers[worker_id]["failure"] = reason

    def ping(self):
        return self.meta["pid"]

    def reload(self):
        """Replace every worker with a fresh interpreter (a deploy); see reload.py. Returns
        {"request": id, "generation": serving now, "reloading": bool}."""
        if self.on_reload is None:
            raise RuntimeError("this task server cannot reload its workers")
        return self.on_reload()

    def health(self):
        """A JSON-compatible snapshot for `tasks_health`; supervisor fields are cached stats."""
        with self._lock:
            self._expire(self._clock())
            now = self._clock()
            queues = {q: {"ready": c[0], "deferred": c[1]}
                      for q, c in sorted(self._pending_by_queue.items())}
            workers = []
            for worker in self._workers.values():
                current = [
                    {"id": tid, "name": r["task"], "running_for": round(now - r["started_at"], 3),
                     "attempt": len(r["worker_ids"]), "progress": r.get("metadata") or None}
                    for tid in worker["current"] if (r := self._records.get(tid)) is not None]
                workers.append({
                    k: v for k, v in worker.items() if k not in ("current", "claimed")
                } | {"current_tasks": current,
                     "current_task": current[0] if current else None,
                     "state": "busy" if current else worker["state"],
                     "uptime": round(now - worker["started_at"], 3)})
            return {
                "server": dict(self.meta, uptime=round(now - self.meta["started_at"], 3),
                               draining=self._draining),
                "queues": queues,
                "pending": self._pending(),
                "running": len(self._running),
                "results": {"stored": len(self._finished), "max": self.max_results,
                            "ttl": self.result_ttl, "evicted": self.counters["evicted"],
                            "expired": self.counters["expired"]},
                "limits": {"max_queue": self.max_queue,
                           "max_tasks_per_worker": self.max_tasks_per_worker},
                "counters": dict(self.counters),
                "histograms": {"task_duration_seconds": self.durations.snapshot(),
                               "queue_wait_seconds": self.waits.snapshot()},
                "workers": workers,
                "state": self.state_health() if self.state_health else None,
                "schedules": self._schedule_report(),
            }

    # ---- supervisor operations (same process, never exposed) -------------------------------

    def register_worker(self, worker_id, pid, **info):
        with self._lock:
            self._workers[worker_id] = {
                "id": worker_id, "pid": pid, "state": "starting", "started_at": self._clock(),
                "ready_at": None, "tasks_done": 0, "claimed": 0, "current": {},
                "retiring": False, "retire_reason": None, "failure": None,
                "rss_bytes": None, "cpu_percent": None, **info}

    def update_worker(self, worker_id, **fields):
        with self._lock:
            if worker_id in self._workers:
                self._workers[worker_id].update(fields)

    def worker_info(self, worker_id):
        with self._lock:
            worker = self._workers.get(worker_id)
            return None if worker is None else dict(worker, current=dict(worker["current"]))

    def retire_worker(self, worker_id, reason):
        """Let the worker finish what it runs, then stop it (its threads get STOP)."""
        with self._lock:
            worker = self._workers.get(worker_id)
            if worker is not None and not worker["retiring"]:
                worker["retiring"] = True
                worker["retire_reason"] = reason
                self._notify_work(everyone=True)

    def worker_exited(self, worker_id, exception_path, message):
        """Forget the worker; its running tasks end FAILED with `exception_path`."""
        with self._lock:
            worker = self._workers.pop(worker_id, None)
            failed = []
            if worker is not None:
                for task_id in list(worker["current"]):
                    self._fail(task_id, exception_path, message)
                    failed.append(task_id)
            self._notify_work(everyone=True)
            return worker, failed

    def fail_task(self, task_id, exception_path, message):
        """End a RUNNING task as FAILED (time limit); a late report from its worker is ignored."""
        with self._lock:
            return self._fail(task_id, exception_path, message)

    def overdue(self, time_limit):
        """(worker id, task id, seconds running) for every task running longer than time_limit."""
        now = self._clock()
        with self._lock:
            return [(wid, tid, now - self._records[tid]["started_at"])
                    for tid, wid in self._running.items()
                    if now - self._records[tid]["started_at"] > time_limit]

    def drain(self):
        """Hand out no more tasks: every claim now returns STOP."""
        with self._lock:
            self._draining = True
            self._notify_work(everyone=True)

    def running_count(self):
        with self._lock:
            return len(self._running)

    def sweep(self):
        """Drop finished results past RESULT_TTL (called from the supervisor tick)."""
        with self._lock:
            self._expire(self._clock())

    def set_meta(self, **fields):
        """Server facts for health (the supervisor's status); under the lock health reads with."""
        with self._lock:
            self.meta.update(fields)

    def count(self, name, n=1):
        with self._lock:
            self.counters[name] += n

    # ---- internals (lock held) --------------------------------------------------------------

    def _enqueue(self, record):
        existing = self._records.get(record["id"])
        if existing is not None:  # a retried enqueue after a dropped connection
            return existing["enqueued_at"]
        if self._draining:
            raise ServerUnavailable(
                f"the task server (pid {self.meta['pid']}) is shutting down and takes no "
                f"new tasks; nothing was stored. Retry once it is back.")
        if self.max_queue is not None and self._pending() >= self.max_queue:
            self.counters["rejected_full"] += 1
            raise QueueFull(
                f"the task queue holds MAX_QUEUE={self.max_queue} pending tasks; nothing "
                f"was stored. Retry later, add WORKERS, or raise MAX_QUEUE.")
        now = self._clock()
        record = dict(record, status=READY, enqueued_at=now)
        self._records[record["id"]] = record
        self._push(record, now)
        self._log_put(record)
        self.counters["enqueued"] += 1
        return now

    def _pending(self):
        # Cancelled pending tasks stay in their heap until popped (lazy removal): not counted.
        return len(self._ready) + len(self._deferred) - len(self._dropped)

    def _push(self, record, now):
        """Queue a READY record (new, or back in the queue): the deferred heap while its
        run_after is in the future, else the ready heap. It gets a new FIFO position `seq`."""
        record["seq"] = seq = next(self._seq)
        counts = self._pending_by_queue.setdefault(record["queue"], [0, 0])
        run_after = record["run_after"]
        if run_after is not None and run_after > now:
            heapq.heappush(self._deferred, (run_after, seq, record["id"]))
            counts[1] += 1
        else:
            heapq.heappush(self._ready, (-record["priority"], seq, record["id"]))
            counts[0] += 1
        self._notify_work()  # a waiting worker takes it (or shortens its wait to the due time)

    def _lookup(self, task_id):
        record = self._records.get(task_id)
        if record is not None and record["status"] in FINISHED:
            if self.result_ttl is not None and \
                    record["finished_at"] + self.result_ttl <= self._clock():
                self._forget(task_id)
                self.counters["expired"] += 1
                return None
            self._finished.move_to_end(task_id)
        return record

    def _promote_due(self, now):
        """Move deferred entries whose run_after has come into the ready heap."""
        deferred = self._deferred
        while deferred and deferred[0][0] <= now:
            _, seq, task_id = heapq.heappop(deferred)
            if seq in self._dropped:  # cancelled while deferred
                self._dropped.discard(seq)
                continue
            record = self._records[task_id]
            heapq.heappush(self._ready, (-record["priority"], seq, task_id))
            counts = self._pending_by_queue[record["queue"]]
            counts[1] -= 1
            counts[0] += 1

    def _pop_ready(self, now):
        ready = self._ready
        self._promote_due(now)
        while ready:
            _, seq, task_id = heapq.heappop(ready)
            if seq in self._dropped:  # cancelled while pending (see store_web.cancel)
                self._dropped.discard(seq)
                continue
            record = self._records[task_id]
            self._pending_by_queue[record["queue"]][0] -= 1
            return record
        return None

    def _start(self, record, worker_id, worker, now):
        record["status"] = RUNNING
        record["started_at"] = record["last_attempted_at"] = now
        record["worker_ids"] = record["worker_ids"] + [worker_id]
        self._log_set(record, "status", "started_at", "last_attempted_at", "worker_ids")
        self._running[record["id"]] = worker_id
        self.waits.observe(now - max(record["enqueued_at"], record["run_after"] or 0))
        worker["current"][record["id"]] = now
        worker["claimed"] += 1
        return dict(record)

    def _finish(self, outcome, worker_id):
        task_id = outcome["id"]
        if self._running.get(task_id) != worker_id:
            return  # already ended by the supervisor (time limit, worker lost)
        record = self._records[task_id]
        worker = self._workers.get(worker_id)
        if worker is not None:
            worker["current"].pop(task_id, None)
            worker["tasks_done"] += 1
        status = outcome["status"]
        errors = record["errors"] + list(outcome.get("errors") or ())
        progress = ()
        if outcome.get("metadata"):  # the task's last progress, coalesced into its outcome
            record["metadata"] = {**(record.get("metadata") or {}), **outcome["metadata"]}
            progress = ("metadata",)
        if status == FAILED and outcome.get("retry") and record.get("retry"):
            self._retry(record, errors, self._clock(), progress)  # the worker matched `on`
            return
        finished_at = max(outcome.get("finished_at") or self._clock(), record["started_at"])
        record.update(status=status, finished_at=finished_at,
                      return_value=outcome.get("return_value"), errors=errors)
        self._log_set(record, "status", "finished_at", "return_value", "errors", *progress)
        self.counters["succeeded" if status == SUCCESSFUL else "failed"] += 1
        self._finished_record(task_id, finished_at)

    def _fail(self, task_id, exception_path, message):
        if task_id not in self._running:
            return False
        worker_id = self._running[task_id]  # None for a task restored as RUNNING (see load)
        record = self._records[task_id]
        now = max(self._clock(), record["started_at"])
        errors = record["errors"] + [
            {"exception_class_path": exception_path, "traceback": message}]
        counter = {"WorkerLost": "worker_lost", "TimeLimitExceeded": "timed_out",
                   "MemoryLimitExceeded": "memory_exceeded",
                   "TaskCancelled": "cancelled"}.get(exception_path.rsplit(".")[-1])
        if counter:
            self.counters[counter] += 1
        worker = self._workers.get(worker_id)
        if worker is not None:
            worker["current"].pop(task_id, None)
        if retries_supervisor_end(record.get("retry"), exception_path, len(record["worker_ids"])):
            self._retry(record, errors, now)
            return True
        record.update(status=FAILED, finished_at=now, errors=errors)
        self._log_set(record, "status", "finished_at", "errors")
        self.counters["failed"] += 1
        self._finished_record(task_id, now)
        return True

    def _retry(self, record, errors, now, changed=()):
        """The attempt failed and the policy gives another: READY again under the same id, due
        after the back-off; `errors` keeps this attempt's error, waiters keep waiting."""
        del self._running[record["id"]]
        record.update(status=READY, errors=errors,
                      run_after=now + backoff(record["retry"], len(record["worker_ids"])))
        self._push(record, now)
        self._log_set(record, "status", "errors", "run_after", "seq", *changed)
        self.counters["retried"] += 1

    def _finished_record(self, task_id, finished_at):
        self._running.pop(task_id, None)  # not there for a task cancelled while pending
        self._note_finished(self._records[task_id])
        self._finished[task_id] = None
        if self.result_ttl is not None:
            self._expiry.append((finished_at, task_id))
        while len(self._finished) > self.max_results:
            old_id, _ = self._finished.popitem(last=False)
            self._records.pop(old_id, None)
            self._log_forget(old_id)
            self.counters["evicted"] += 1
        self._tell_finished(task_id)

    def _forget(self, task_id):
        self._finished.pop(task_id, None)
        self._records.pop(task_id, None)
        self._log_forget(task_id)

    def _expire(self, now):
        if self.result_ttl is None:
            return
        expiry = self._expiry
        while expiry and expiry[0][0] + self.result_ttl <= now:
            finished_at, task_id = expiry.popleft()
            record = self._records.get(task_id)
            if record is not None and record["finished_at"] == finished_at:
                self._forget(task_id)
                self.counters["expired"] += 1
