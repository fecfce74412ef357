"""TaskStore: the records, the running set and the workers, under one lock, in the server.

Plain, thread-safe Python with no IPC and no Django. The server pins ONE instance, and every
method that `calls()` names is one socket round trip for a client.

    enqueue(record) ──> queue (queue.py: ready / deferred heaps)
    claim(worker, outcome, token) <── longpoll.py (blocking, or parked by the event loop)
        report: outcome ──> SUCCESSFUL / FAILED ──> finished (results.py: LRU, TTL)
                        └─> "retry" and the policy agrees ──> back to the queue, same id
                (once per task and attempt: a resent report is ignored)
        a repeated claim (same token, claims.py) ──> the task handed out for it, again
        hand out: queue.pop ──> record RUNNING, owned by the worker
    claim_batch(worker, outcomes, token, want)  (prefetch, reservations.py): the outcomes,
        then the task to run now and up to want - 1 reserved ones (READY until they start)
    get(id) / get_many / wait ──> record copy (a hit refreshes LRU recency)
    supervisor (same process): register_worker, worker_exited, fail_task, overdue, retire...

The core owns its state; the parts it is composed of get an explicit reference to it and use
its lock and the methods marked "lock held":

    queue     PendingQueue     which READY task runs next            (queue.py)
    finished  FinishedResults  the finished ids kept, LRU and TTL    (results.py)
    polls     LongPolls        wait / claim, blocking or parked      (longpoll.py)
    cancels   Cancels          cancel(id), kill requests             (cancel.py)
    listing   Listing          the page's results listing, overview  (listing.py)
    schedules ScheduleState    the scheduler's runs and notes        (schedule_state.py)
    stats     Stats            histograms and history rings          (stats.py)
    journal   Journaler        every change made durable (STATE_DIR) (journaler.py)
    claims    ClaimMemo        the last task handed out per worker thread (claims.py)
    notices   Notices          task_finished of server-ended tasks   (notices.py)
    reservations Reservations  prefetch: reserved tasks, start tables (reservations.py)
    bulk      Bulk             enqueue_many: chunks staged, stored all or nothing (bulk.py)
    flows     Workflows        unique keys, dependencies; limits sit  (workflows.py, unique.py,
                               in the queue (queue.limits)             dependencies.py, limits.py)

Records (protocol/records.py) are JSON-compatible dicts. Inner lists are replaced, never
mutated, so a shallow copy handed to the pickler can never change under it. Timestamps are
`time.time()` floats taken in this process (or reported by a worker on the same host), so
enqueued_at <= started_at <= finished_at holds across processes.
"""

import os
import threading
import time

from ..exceptions import QueueFull, ServerUnavailable
from ..protocol.records import Outcome, Record
from ..protocol.retry_policy import backoff, retries_supervisor_end
from ..protocol.status import (
    END_COUNTERS,
    FAILED,
    FINISHED,
    READY,
    RUNNING,
    STOP,
    SUCCESSFUL,
    WORKER_LOST,
)
from .bulk import Bulk
from .cancel import Cancels
from .claims import ClaimMemo
from .journaler import Journaler
from .listing import Listing
from .longpoll import NOTHING, LongPolls
from .notices import Notices
from .queue import PendingQueue
from .reservations import Reservations
from .results import FinishedResults
from .schedule_state import ScheduleState
from .stats import Stats
from .workflows import Workflows

COUNTERS = ("enqueued", "succeeded", "failed", "worker_lost", "timed_out", "evicted", "expired",
            "rejected_full", "worker_restarts", "retried", "memory_exceeded", "cancelled")


class TaskStore:
    def __init__(self, *, max_results=1000, result_ttl=None, max_queue=None,
                 max_tasks_per_worker=None, clock=time.time):
        self.max_queue = max_queue
        self.max_tasks_per_worker = max_tasks_per_worker
        self.clock = clock
        self.lock = threading.Lock()
        self.records: dict[str, Record] = {}  # id -> record (pending, running and finished)
        self.running = {}               # id -> worker id (None: restored as RUNNING)
        self.workers = {}               # worker id -> info dict (see register_worker)
        self.draining = False
        self.counters = dict.fromkeys(COUNTERS, 0)
        # Small server state outside the records that must survive restarts (e.g. the last run
        # of each schedule): change it under the lock, then journal.durable(key).
        self.durable = {}
        self.meta = {"pid": os.getpid(), "started_at": clock()}
        self.state_health = None        # STATE_DIR facts for health (a callable), if any
        self.on_reload = None           # the supervisor's request_reload, once it runs
        self.queue = PendingQueue(self.records)
        self.finished = FinishedResults(max_results, result_ttl)
        self.polls = LongPolls(self)
        self.cancels = Cancels(self)
        self.listing = Listing(self)
        self.schedules = ScheduleState(self)
        self.stats = Stats()
        self.journal = Journaler(self)
        self.claims = ClaimMemo(self)
        self.notices = Notices(self)
        self.flows = Workflows(self)
        self.reservations = Reservations(self)
        self.bulk = Bulk(self)
        self._reserved = self.reservations.by_task  # id -> (worker, thread, rseq) (one dict)
        self._dependents = self.flows.deps.children  # parent id -> blocked children (one dict)
        self._pins = self.flows.deps.pins  # result id -> dependents not ended (one dict)

    def calls(self):
        """The methods a client may call, by the wire's names (protocol/methods.py)."""
        polls = self.polls
        return {
            "enqueue": self.enqueue, "get": self.get, "get_many": self.get_many,
            "wait": polls.wait, "finish_and_claim": polls.finish_and_claim,
            "report_and_claim": polls.report_and_claim,
            "claim_batch": polls.claim_batch, "report": self.report,
            "worker_failed": self.worker_failed, "ping": self.ping, "health": self.health,
            "reload": self.reload, "save_metadata": self.save_metadata,
            "metadata": self.metadata, "cancel": self.cancels.cancel,
            "results": self.listing.results, "overview": self.listing.overview,
            "take_notices": self.notices.take,
            "enqueue_workflow": self.flows.enqueue, "enqueue_many": self.bulk.enqueue_many,
        }

    # ---- client operations -----------------------------------------------------------------

    def enqueue(self, record: Record) -> float | None:
        """Store a READY record; returns its server-side `enqueued_at`. Idempotent per id."""
        with self.lock:
            return self.enqueue_locked(record)

    def get(self, task_id):
        """The record, or None if unknown, evicted or expired."""
        with self.lock:
            record = self.lookup(task_id)
            return None if record is None else dict(record)

    def get_many(self, task_ids):
        with self.lock:
            if self._reserved or self.reservations.held:  # one read of each worker's start
                self.reservations.sync_ids(task_ids)  # table, not one per id
            return [None if (r := self.lookup(i, sync=False)) is None else dict(r)
                    for i in task_ids]

    def save_metadata(self, task_id, fields, replace=False):
        """Merge `fields` into a RUNNING task's metadata (or replace it with them); False when
        the task is unknown or not running any more (finished, or ended by the supervisor)."""
        with self.lock:
            if task_id in self._reserved:  # started from a reservation: RUNNING since then
                self.reservations.sync_task(task_id)
            record = self.records.get(task_id)
            if record is None or record["status"] != RUNNING:
                return False
            self.journal.check()  # a full disk: refused, nothing changes
            record["metadata"] = dict(fields) if replace else \
                {**(record.get("metadata") or {}), **fields}
            self.journal.set(record, "metadata")
            return True

    def metadata(self, task_id):
        """(status, metadata) of a task, or None if unknown, evicted or expired."""
        with self.lock:
            record = self.lookup(task_id)
            return None if record is None else (record["status"], record.get("metadata") or {})

    def worker_failed(self, worker_id, reason):
        """A worker reports why it cannot start (bad settings, import error) before exiting."""
        with self.lock:
            if worker_id in self.workers:
                self.workers[worker_id]["failure"] = reason

    def ping(self):
        return self.meta["pid"]

    def reload(self):
        """Replace every worker with a fresh interpreter (a deploy); see supervision/reload.py.
        Returns {"request": id, "generation": serving now, "reloading": bool}."""
        if self.on_reload is None:
            raise RuntimeError("this task server cannot reload its workers")
        return self.on_reload()

    def health(self):
        """A JSON-compatible snapshot for `tasks_health`; supervisor fields are cached stats."""
        with self.lock:
            self.expire()
            self.reservations.sync_all()  # reserved tasks a worker started are RUNNING
            now = self.clock()
            return {
                "server": dict(self.meta, uptime=round(now - self.meta["started_at"], 3),
                               draining=self.draining),
                "queues": self.reservations.add_counts(self.queue.counts()),
                "pending": self.pending_count(),
                "workflows": self.flows.report(now),
                "running": len(self.running),
                "reserved": len(self._reserved),  # prefetch: READY, counted in "pending" too
                "prefetch": self.reservations.report(),
                "results": {"stored": len(self.finished), "max": self.finished.max_results,
                            "ttl": self.finished.ttl, "evicted": self.counters["evicted"],
                            "expired": self.counters["expired"]},
                "limits": {"max_queue": self.max_queue,
                           "max_tasks_per_worker": self.max_tasks_per_worker},
                "counters": dict(self.counters),
                "histograms": self.stats.histograms(),
                "workers": [self._worker_view(worker, now) for worker in self.workers.values()],
                "state": self.state_health() if self.state_health else None,
                "schedules": self.schedules.report(),
                "notices": self.notices.report(),
            }

    def _worker_view(self, worker, now):
        current = [
            {"id": tid, "name": r["task"],
             "running_for": round(now - r["last_attempted_at"], 3),  # this attempt's
             "attempt": len(r["worker_ids"]), "progress": r.get("metadata") or None}
            for tid in worker["current"] if (r := self.records.get(tid)) is not None]
        return {k: v for k, v in worker.items() if k not in ("current", "claimed")} | {
            "current_tasks": current, "current_task": current[0] if current else None,
            "state": "busy" if current else worker["state"],
            "reserved": self.reservations.of_worker(worker["id"]),
            "uptime": round(now - worker["started_at"], 3)}

    def history_snapshot(self):
        with self.lock:
            return self.stats.history.snapshot()

    # ---- supervisor operations (same process, never exposed) -------------------------------

    def register_worker(self, worker_id, pid, table=None, **info):
        """A worker the supervisor started; `table`: its start table (prefetch)."""
        with self.lock:
            if table is not None:
                self.reservations.attach(worker_id, table)
            self.workers[worker_id] = {
                "id": worker_id, "pid": pid, "state": "starting", "started_at": self.clock(),
                "ready_at": None, "tasks_done": 0, "claimed": 0, "current": {},
                "retiring": False, "retire_reason": None, "failure": None,
                "rss_bytes": None, "cpu_percent": None,
                # its pool's (supervision/pools.py): the queues it takes (None: all of them)
                # and its MAX_TASKS_PER_WORKER
                "queues": None, "max_tasks": self.max_tasks_per_worker, **info}

    def update_worker(self, worker_id, **fields):
        with self.lock:
            if worker_id in self.workers:
                self.workers[worker_id].update(fields)

    def worker_info(self, worker_id):
        with self.lock:
            self.reservations.sync(worker_id)
            worker = self.workers.get(worker_id)
            return None if worker is None else dict(worker, current=dict(worker["current"]))

    def retire_worker(self, worker_id, reason):
        """Let the worker finish what it runs, then stop it (its threads get STOP)."""
        with self.lock:
            self.retire(worker_id, reason)

    def worker_exited(self, worker_id, exception_path, message):
        """Forget the worker; its running tasks end FAILED with `exception_path`."""
        with self.lock:
            self.reservations.worker_gone(worker_id)  # started: RUNNING, ends below; else back
            worker = self.workers.pop(worker_id, None)
            self.claims.forget(worker_id)
            failed = []
            if worker is not None:
                for task_id in list(worker["current"]):
                    self.fail(task_id, exception_path, message)
                    failed.append(task_id)
            self.notices.release(worker_id)
            self.polls.notify_work(everyone=True)
            return worker, failed

    def fail_task(self, task_id, exception_path, message, worker_id=None, over=None):
        """End a RUNNING task as FAILED (time limit); a late report from its worker is ignored.

        With `worker_id` and `over` (seconds), only while the task still runs on that worker
        and its current attempt has run longer than `over`: the supervisor found it overdue
        under an earlier hold of the lock, and its report may have come in between (right
        after a stall of the server, the reports held by the stall all do), the worker then
        running another task that stopping it would lose. False: nothing changed."""
        with self.lock:
            if worker_id is not None and self.running.get(task_id) != worker_id:
                return False
            if over is not None and task_id in self.running and self.journal.ran(
                    self.records[task_id]["last_attempted_at"], self.clock()) <= over:
                return False
            return self.fail(task_id, exception_path, message)

    def overdue(self, time_limit):
        """(worker id, task id, seconds running) for every task whose current attempt has run
        longer than time_limit (TIME_LIMIT counts per attempt: last_attempted_at; a reserved
        task's from its real start, read from its worker's start table first). Time while
        the journal could not be written does not count (journaler.py: a task's report is
        refused then, and one handed out in that turn waits for the disk)."""
        with self.lock:
            self.reservations.sync_all()  # a reserved task runs from its real start
            now = self.clock()
            if self.journal.paused(now):
                return []
            ran = self.journal.ran
            return [(wid, tid, elapsed) for tid, wid in self.running.items()
                    if (elapsed := ran(self.records[tid]["last_attempted_at"], now))
                    > time_limit]

    def drain(self):
        """Hand out no more tasks: every claim now returns STOP."""
        with self.lock:
            self.draining = True
            for worker_id in list(self.reservations.by_worker):
                self.reservations.recall(worker_id)  # not started: back to the queue
            self.polls.notify_work(everyone=True)

    def running_count(self):
        with self.lock:
            return len(self.running)

    def sweep(self):
        """Drop finished results past RESULT_TTL (called from the supervisor tick)."""
        with self.lock:
            self.expire()

    def set_meta(self, **fields):
        """Server facts for health (the supervisor's status); under the lock health reads with."""
        with self.lock:
            self.meta.update(fields)

    def count(self, name, n=1):
        with self.lock:
            self.counters[name] += n

    def sample_history(self):
        with self.lock:
            c = self.counters
            return self.stats.history.sample(
                self.clock(), c["succeeded"] + c["failed"],
                {wid: (w["rss_bytes"], w["cpu_percent"]) for wid, w in self.workers.items()})

    def commit(self) -> bool:
        """Make the journaled changes durable before a reply goes out (see journaler.py);
        False when some of them cannot be written yet (they stay buffered)."""
        durable = self.journal.commit()
        if durable and self.reservations.closing:  # gone workers' start tables: journaled
            with self.lock:
                self.reservations.release_closed()
        return durable

    def lost_at_stop(self):
        """What a server without STATE_DIR loses when it stops now (for its last log line)."""
        with self.lock:
            return {"pending task": len(self.queue), "result": len(self.finished),
                    "task_finished notice": len(self.notices.pending)}

    # ---- a restored state (STATE_DIR start, before serving) ----------------------------------

    def restore(self, records, durable, counters, started=None):
        """Take over a restored state: `records` with the finished ones in LRU order; pending
        ones keep their FIFO `seq`. Returns (pending, results, running) where `running` lists
        the records that were RUNNING when the previous server stopped: give them to
        end_interrupted() once a journal is attached. `started(worker, thread, rseq)` reads
        the previous workers' start tables: a task reserved then is READY again unless its
        worker started it (reservations.py)."""
        with self.lock:
            now = self.clock()
            self.reservations.restored(records.values(), started, now)
            self.counters.update(counters)
            self.durable.update(durable)
            if self.records:
                self.records.update(records)
            else:  # the usual case, at start-up: take the restored dict, no copy of 200,000
                self.records = self.queue.records = records
            # Comprehensions rather than one loop with branches: 200,000 records restore in
            # about half the time (start-up time is the point of this method).
            values = records.values()
            pending = [r for r in values if r["status"] == READY]
            running = [r["id"] for r in values if r["status"] == RUNNING]
            self.finished.load([i for i, r in records.items() if r["status"] in FINISHED],
                               self.records)
            # unique holders, limit slots and windows, blocked dependents (workflows.py)
            pending = self.flows.rebuild(values, pending, now)
            self.queue.load(pending, now)
            self.running.update(dict.fromkeys(running))  # owned by no worker of ours
            self.queue.continue_after(max((r.get("seq", 0) for r in values), default=-1))
            self.listing.rebuild()
            self.notices.load()
            return len(self.queue), len(self.finished), running

    def end_interrupted(self, task_ids, text):
        """Tasks that were RUNNING when the previous server died end FAILED (WorkerLost): they
        may have had effects, so they are never run again (at most once), unless their retry
        policy names WorkerLost in `on` (then they go back to the queue, see fail)."""
        with self.lock:
            self.reservations.journal_restored()  # reservations of the previous server
            for task_id in task_ids:
                record = self.records[task_id]
                again = retries_supervisor_end(record.get("retry"), WORKER_LOST,
                                               len(record["worker_ids"]))
                outcome = ("its retry policy names WorkerLost: it goes back to the queue" if again
                           else "it was not run again")
                self.fail(task_id, WORKER_LOST, f"{WORKER_LOST}: {text}; {outcome}\n")
            self.flows.settle()  # dependents of a task that failed just before the crash

    # ---- lock held: the one way each change is made (the parts use these too) ---------------

    def enqueue_locked(self, record: Record) -> float | None:
        existing = self.records.get(record["id"])
        if existing is not None:  # a retried enqueue after a dropped connection
            self.journal.depend()  # answered once the first one's entry is durable
            return existing["enqueued_at"]
        self.journal.check()  # a full disk: refused before anything changes
        if self.draining:
            raise ServerUnavailable(
                f"the task server (pid {self.meta['pid']}) is shutting down and takes no "
                f"new tasks; nothing was stored. Retry once it is back.")
        if self.max_queue is not None and self.pending_count() >= self.max_queue:
            self.counters["rejected_full"] += 1
            raise QueueFull(
                f"the task queue holds MAX_QUEUE={self.max_queue} pending tasks; nothing "
                f"was stored. Retry later, add WORKERS, or raise MAX_QUEUE.")
        now = self.clock()
        record = record.copy()  # the caller keeps its own
        record["status"], record["enqueued_at"] = READY, now
        self.records[record["id"]] = record
        # Workflows (workflows.py): a unique key held; a task blocked on its dependencies is
        # in no queue until they succeed (or ends at once: a dependency failed already).
        outside = ("unique" in record or "after" in record) and self.flows.stored(record)
        if not outside:
            self._push(record, now)
        self.journal.put(record)
        self.counters["enqueued"] += 1
        if outside:
            self.flows.put_done(record)
        return now

    def pending_count(self):
        """READY tasks: queued, deferred, reserved, and blocked on their dependencies."""
        return len(self.queue) + len(self._reserved) + self.flows.blocked_count()

    def lookup(self, task_id, sync=True):
        """The record (not a copy), or None; a finished one is touched (LRU) or expired; a
        reserved one RUNNING if its worker's start table says it started (unless `sync` is
        False: the caller read the tables already)."""
        record = self.records.get(task_id)
        if record is not None and record["status"] in FINISHED:
            if self.finished.is_expired(record, self.clock()) and \
                    not self.flows.pinned(task_id):
                self.forget(task_id)
                self.counters["expired"] += 1
                return None
            self.finished.touch(task_id)
        elif sync and (task_id in self._reserved or self.reservations.held):
            self.reservations.sync_task(task_id)  # started? finished, its outcome held?
        return record

    def claim(self, worker_id: str, outcome: Outcome | None = None, token=None):
        """Report `outcome` (the worker thread's last task, or None), then hand out the next
        task: a RUNNING record copy, STOP (the thread must exit) or NOTHING (wait). `token`
        (thread, seq), from report_and_claim, makes a repeated claim idempotent (claims.py)."""
        worker = self.workers.get(worker_id)
        if outcome is not None:
            self.journal.check()  # a full disk: not applied; the worker sends it again
            self._finish(outcome, worker_id)
        if token is not None and worker is not None:
            again = self.claims.repeat(worker_id, token)
            if again is not None:
                return again
        record, now = self._next_record(worker)
        if now is None:
            return record  # STOP or NOTHING
        got = self._start(record, worker_id, worker, now)
        if token is not None:
            self.claims.note(worker_id, token, got)
        return got

    def claim_batch(self, worker_id: str, outcomes, token, want):
        """Prefetch (reservations.py): report `outcomes`, then hand out a list: the task to
        run now (RUNNING, as claim() hands it) and up to `want` - 1 reserved ones (each with
        its "rseq"; READY here until the worker's start table says it started). STOP or
        NOTHING as claim(). A repeated claim (same token) gets the same batch again."""
        worker = self.workers.get(worker_id)
        self._report(worker_id, outcomes)
        if worker is not None:
            again = self.claims.repeat_batch(worker_id, token)
            if again is not None:
                return again
        record, now = self._next_record(worker)
        if now is None:
            return record  # STOP or NOTHING
        n = self.reservations.size(worker_id, worker, token[0], want)
        got = [self._start(record, worker_id, worker, now)]
        if n > 1:  # its outcome is held in the table while the reserved ones run ("hold")
            self.reservations.hold_first(worker_id, token[0], got[0])
            got += self.reservations.reserve(worker_id, worker, token[0], n - 1, now)
        self.claims.note_batch(worker_id, token, got)
        return got

    def report(self, worker_id, outcomes):
        """Outcomes a worker sends before its next claim (prefetch: an early task of a batch
        whose next task runs long). Idempotent like a claim's report; returns how many."""
        with self.lock:
            self._report(worker_id, outcomes)
            return len(outcomes)

    def _report(self, worker_id, outcomes):
        """Take a worker's outcomes, or none while the journal cannot be written: a full disk
        refuses them all (StorageUnavailable) and the worker sends them again (lock held)."""
        if outcomes:
            self.journal.check()
        for outcome in outcomes:
            self._finish(outcome, worker_id)

    def _next_record(self, worker):
        """(the record a claim of `worker` hands out next, now), or (STOP or NOTHING, None)
        (lock held). Popped from its pool's queues (None: all); the caller starts it."""
        stop = self._may_claim(worker)
        if stop is not None:
            return stop, None
        assert worker is not None  # (_may_claim answers STOP for an unknown worker)
        now = self.clock()
        record = self.queue.pop(now, worker["queues"])
        if record is None:
            return NOTHING, None
        return record, now

    def _may_claim(self, worker):
        """None when the worker may get a task now, else STOP, or NOTHING while the journal
        cannot be written (lock held)."""
        if worker is not None and worker["state"] == "starting" and not self.draining \
                and not worker["retiring"]:  # a worker told to stop at once never was ready
            worker["state"] = "idle"
            worker["ready_at"] = self.clock()
        if worker is None or self.draining or worker["retiring"]:
            return STOP
        limit = worker["max_tasks"]  # its pool's MAX_TASKS_PER_WORKER
        if limit is not None and worker["claimed"] >= limit:
            worker["retiring"] = True
            worker["retire_reason"] = f"MAX_TASKS_PER_WORKER={limit} reached"
            return STOP
        if self.journal.failing:
            return NOTHING  # a full disk: claims wait, no task is handed out (or burned)
        return None

    def retire(self, worker_id, reason):
        """The worker takes no new task (its threads get STOP once idle)."""
        worker = self.workers.get(worker_id)
        if worker is not None and not worker["retiring"]:
            worker["retiring"] = True
            worker["retire_reason"] = reason
            self.reservations.recall(worker_id)  # for the other workers (not started yet)
            self.polls.notify_work(everyone=True)

    def fail(self, task_id, exception_path, message):
        """End a RUNNING task FAILED with `exception_path` (or give it another attempt, when
        its retry policy names that class). False if it is not running."""
        if task_id not in self.running:
            return False
        worker_id = self.running[task_id]  # None for a task restored as RUNNING (see restore)
        record = self.records[task_id]
        now = max(self.clock(), record["started_at"])
        errors = record["errors"] + [
            {"exception_class_path": exception_path, "traceback": message}]
        counter = END_COUNTERS.get(exception_path)
        if counter:
            self.counters[counter] += 1
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker["current"].pop(task_id, None)
        if retries_supervisor_end(record.get("retry"), exception_path, len(record["worker_ids"])):
            self._retry(record, errors, now)
            return True
        record["status"], record["finished_at"], record["errors"] = FAILED, now, errors
        self.journal.set(record, "status", "finished_at", "errors")
        self.counters["failed"] += 1
        self._ended(task_id, now)
        self.notices.add(record)  # no worker sends task_finished for it: one will (notices.py)
        return True

    def end_pending(self, record, exception_path, message, queued=True):
        """End a READY task FAILED with `exception_path` without running it (a cancel, a failed
        dependency). `queued` False: it is in no queue (a reservation revoked)."""
        now = self.clock()
        if queued and not self.flows.left_queue(record):  # blocked on dependencies: no queue
            self.queue.drop(record, now)
        record["status"], record["finished_at"] = FAILED, now
        record["errors"] = record["errors"] + [
            {"exception_class_path": exception_path, "traceback": message}]
        self.journal.set(record, "status", "finished_at", "errors")
        self.counters["failed"] += 1
        counter = END_COUNTERS.get(exception_path)
        if counter:
            self.counters[counter] += 1
        self._ended(record["id"], now)
        self.notices.add(record)

    def forget(self, task_id):
        self.finished.remove(task_id)
        record = self.records.pop(task_id, None)
        if record is not None and "limit" in record:
            self.flows.forgotten(record, self.clock())
        self.journal.forget(task_id)

    def expire(self):
        """Drop the finished results past RESULT_TTL (not one a dependent still needs)."""
        for task_id in self.finished.expired(self.clock(), self.records):
            if self.flows.pinned(task_id):
                self.finished.hold(task_id)
                continue
            self.forget(task_id)
            self.counters["expired"] += 1

    def unblock(self, record):
        """A task's dependencies all succeeded: into the queue (workflows, lock held)."""
        self._push(record, self.clock())
        self.journal.set(record, "seq")

    def unpinned(self, task_id):
        """No dependent needs this result any more: an ordinary result again (workflows)."""
        record = self.records.get(task_id)
        if record is not None and task_id in self.finished.held:
            if self.finished.is_expired(record, self.clock()):
                self.forget(task_id)
                self.counters["expired"] += 1
            else:
                self._evict(self.finished.unhold(task_id, record["finished_at"]))

    def reserve_record(self, record, held):
        """Prefetch (reservations.py): a READY record reserved by [worker, thread, rseq]."""
        record["reserved"] = held
        self.journal.set(record, "reserved")

    def start_reserved(self, record, worker_id, at):
        """A reserved record's worker started it at `at` (its start table, or its report):
        RUNNING as _start makes it, from its real start (its slot was taken when reserved)."""
        at = max(at, record["enqueued_at"] or 0.0)
        record["status"] = RUNNING
        if record["started_at"] is None:  # Django's started_at: the FIRST start
            record["started_at"] = at
        record["last_attempted_at"] = at
        record["worker_ids"] = record["worker_ids"] + [worker_id]
        record["reserved"] = None  # journaled as gone, then dropped from the record
        self.journal.set(record, "status", "started_at", "last_attempted_at", "worker_ids",
                         "reserved")
        del record["reserved"]
        self.running[record["id"]] = worker_id
        self.stats.started(record, at)
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker["current"][record["id"]] = at
        if "unique" in record:
            self.flows.unique.started(record)  # until="started": free from now on

    def finish_outcome(self, outcome: Outcome, worker_id: str):
        """An outcome a worker held in its start table (reservations.py), taken as its report
        would be: once per task and attempt."""
        self._finish(outcome, worker_id)

    def unreserve(self, record, worker_id, now, requeue):
        """A reservation that never started: its slot released, and with `requeue` back in the
        queue at its place (its own seq); without, the caller ends it (a cancel)."""
        record["reserved"] = None
        self.journal.set(record, "reserved")
        del record["reserved"]
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker["claimed"] -= 1
        released = "limit" in record and self.flows.limits.release(record, now)
        if requeue:
            self.queue.push(record, now, keep_seq=True)
        if released or requeue:
            self.polls.notify_work()  # a parked claim may take it (or the key's next task)

    # ---- internals (lock held) --------------------------------------------------------------

    def _push(self, record, now):
        self.queue.push(record, now)
        self.polls.notify_work()  # a waiting worker takes it (or shortens its wait to the due time)

    def _start(self, record, worker_id, worker, now):
        record["status"] = RUNNING
        if record["started_at"] is None:  # Django's started_at: the FIRST start; a retry
            record["started_at"] = now    # only moves last_attempted_at
        record["last_attempted_at"] = now
        record["worker_ids"] = record["worker_ids"] + [worker_id]
        self.journal.set(record, "status", "started_at", "last_attempted_at", "worker_ids")
        self.running[record["id"]] = worker_id
        self.stats.started(record, now)
        worker["current"][record["id"]] = now
        worker["claimed"] += 1
        copy = dict(record)
        if "limit" in record or "unique" in record or "after" in record:
            self.flows.started(record, now, copy)  # a limit slot, a unique key, parents' results
        return copy

    def _finish(self, outcome: Outcome, worker_id: str):
        task_id = outcome["id"]
        if self.running.get(task_id) != worker_id and not (
                task_id in self._reserved and self.reservations.begin_reported(outcome, worker_id)):
            return  # already ended by the supervisor (time limit, worker lost), or resent
        record = self.records[task_id]
        if outcome.get("attempt", len(record["worker_ids"])) != len(record["worker_ids"]):
            return  # a resent report of an earlier attempt of a task that runs here again
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker["current"].pop(task_id, None)
            worker["tasks_done"] += 1
        status = outcome["status"]
        errors = record["errors"] + list(outcome.get("errors") or ())
        progress: tuple[str, ...] = ()
        if outcome.get("metadata"):  # the task's last progress, coalesced into its outcome
            record["metadata"] = {**(record.get("metadata") or {}), **outcome["metadata"]}
            progress = ("metadata",)
        if status == FAILED and outcome.get("retry") and record.get("retry"):
            self._retry(record, errors, self.clock(), progress)  # the worker matched `on`
            return
        finished_at = max(outcome.get("finished_at") or self.clock(), record["started_at"] or 0.0)
        record["status"], record["finished_at"], record["errors"] = status, finished_at, errors
        record["return_value"] = outcome.get("return_value")
        self.journal.set(record, "status", "finished_at", "return_value", "errors", *progress)
        self.counters["succeeded" if status == SUCCESSFUL else "failed"] += 1
        self._ended(task_id, finished_at)

    def _retry(self, record, errors, now, changed=()):
        """The attempt failed and the policy gives another: READY again under the same id, due
        after the back-off; `errors` keeps this attempt's error, waiters keep waiting."""
        del self.running[record["id"]]
        record["status"], record["errors"] = READY, errors
        record["run_after"] = now + backoff(record["retry"], len(record["worker_ids"]))
        if "limit" in record or "unique" in record:
            changed = (*changed, *self.flows.requeued(record, now))  # slot freed, key kept
        self._push(record, now)
        self.journal.set(record, "status", "errors", "run_after", "seq", *changed)
        self.counters["retried"] += 1

    def _ended(self, task_id, finished_at):
        """A task finished (any way): into the results, the listing and the statistics; waiters
        told; results past MAX_RESULTS evicted."""
        was_running = self.running.pop(task_id, False) is not False  # False: ended pending
        record = self.records[task_id]
        self.stats.finished(record)
        self.listing.note(record)
        if "limit" in record or "unique" in record or "after" in record or \
                task_id in self._dependents:
            self.flows.ended(record, was_running, self.clock())  # slot, key, dependents
        evicted = self.finished.add(task_id, finished_at)
        if evicted:
            self._evict(evicted)
        self.polls.finished(task_id)

    def _evict(self, ids):
        """Results past MAX_RESULTS go, except the ones a dependent still needs (held)."""
        pins = self._pins
        for old_id in ids:
            if old_id in pins:
                self.finished.hold(old_id)
                continue
            record = self.records.pop(old_id, None)
            if record is not None and "limit" in record:
                self.flows.forgotten(record, self.clock())
            self.journal.forget(old_id)
            self.counters["evicted"] += 1
