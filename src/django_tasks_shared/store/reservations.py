"""Prefetch: tasks reserved for a worker thread behind the one it runs now (issue 16).

    claim_batch (TaskStore, lock held): the first task as any claim (queue.pop -> _start:
        RUNNING now), then reserve(): up to n - 1 more, each
        queue.pop -> take: its concurrency slot held (limits.take), its parents' results
            copied, a reservation number `rseq` per worker thread; the record stays READY (and
            counted pending), out of the ready heaps; journaled ("reserved": [w, thread, rseq])
        n = min(want, the ready tasks // the pool's threads), at least 1: 1 while the queue is
        shallow, so that no idle thread waits while another holds reserved tasks
    worker: start table (protocol/starts.py): STARTED rseq at t, then it runs the task
    begin(id, t) <── its outcome's "started_at" (report, or the next batch claim)
                └─── sync(): the table read (health and every view of it, the supervisor's tick
                     for TIME_LIMIT, a worker's info, a batch claim of the same thread)
        -> TaskStore.start_reserved: RUNNING exactly as _start makes it, started at t (the
        real start: started_at, TIME_LIMIT), its unique key (until="started") freed
    give_back(id): its worker died, retires or the server drains before it started ->
        TaskStore.unreserve: READY in the queue at its place (its seq kept), its slot
        released. Never WorkerLost.
    revoke(id): a cancel -> REVOKED in the table (the worker skips it) and ended pending; or
        too late, it started: a running task's cancel

A reserved task holds its slot, its unique key and its pool's queue as a running one does,
and gives them back through the same release (TaskStore._ended, or give_back here). This part
keeps the index (which worker thread holds what, under which rseq) and the tables; the records
change through the store's lock-held methods reserve_record, start_reserved and unreserve. A rate
limit ends a batch (a rate-limited task is handed out only first, started at its claim): its
window counts real starts, and a reserved task's start is not known when it is counted.
No lock of its own: the store's lock is held by every caller.
"""

import os
import pickle

from ..protocol.starts import FINISHED, UNKNOWN
from ..protocol.status import RUNNING


class Reservations:
    def __init__(self, store):
        self.store = store
        self.by_task: dict[str, tuple[str, int, int]] = {}  # id -> (worker, thread, rseq)
        self.by_worker: dict[str, dict[str, tuple[int, int]]] = {}  # worker -> id -> (t, rseq)
        self.tables: dict = {}          # worker id -> its StartTable (protocol/starts.py)
        self.closing: list = []         # tables of gone workers, closed after the next commit
        self._next: dict[tuple[str, int], int] = {}  # (worker, thread) -> the next rseq
        # worker -> id -> (thread, rseq) of its RUNNING batch tasks (a batch's first, and each
        # reservation once begun) whose outcome the worker may hold in its table entry while
        # the rest of the batch runs: what a view or its death reads there
        self.held: dict[str, dict[str, tuple[int, int]]] = {}
        self.given_back = 0             # reservations put back in the queue (health)
        self.made = 0                   # reservations made since the server started (health)
        self._restored: list[str] = []  # decided by restored(), journaled by journal_restored()

    def __len__(self):
        return len(self.by_task)

    # ---- workers -----------------------------------------------------------------------------

    def attach(self, worker_id, table):
        """A new worker's start table (the supervisor made it): prefetch for its threads."""
        self.tables[worker_id] = table

    def worker_gone(self, worker_id):
        """The worker exited (lock held): what it started becomes RUNNING (the store then ends
        it WorkerLost with its other tasks); the rest goes back to the queue at its place."""
        mine = self.by_worker.get(worker_id)
        table = self.tables.pop(worker_id, None)
        if table is not None:
            self.closing.append(table)
        for key in [k for k in self._next if k[0] == worker_id]:
            del self._next[key]
        held = self._live(worker_id)
        self.held.pop(worker_id, None)
        # The process is gone, so is its lock: the table is exact now: what it finished (its
        # outcome held for the next claim) ends as it ran, what it started ends WorkerLost (as
        # RUNNING), the rest goes back. Could not be read (unlikely): each as started.
        if table is not None and (mine or held):
            self._apply(worker_id, table, mine or {}, held, patience=0.05, assume=True)
        now = self.store.clock()
        for task_id in list(mine or ()):
            self.give_back(task_id, now)
        self.by_worker.pop(worker_id, None)

    def release_closed(self):
        """Close the start tables of gone workers (and remove a STATE_DIR's file), once what
        they told is journaled (TaskStore.commit calls this after the journal's commit)."""
        closing, self.closing = self.closing, []
        for table in closing:
            table.close()
            if table.path is not None:
                try:
                    os.unlink(table.path)
                except OSError:
                    pass

    # ---- the claim ---------------------------------------------------------------------------

    def size(self, worker_id, worker, thread, want):
        """How many tasks this batch claim hands out in all (the first one included)."""
        table = self.tables.get(worker_id)
        if table is None or want is None or want <= 1 or not 0 <= thread < table.threads:
            return 1
        want = min(want, table.capacity)
        limit = worker["max_tasks"]
        if limit is not None:
            want = min(want, limit - worker["claimed"])  # the first one included
        if want <= 1:
            return 1
        queue = self.store.queue
        queues = worker["queues"]
        counts = queue.by_queue
        ready = sum(c[0] for c in counts.values()) if queues is None else \
            sum(counts[q][0] for q in queues if q in counts)
        # its share of the ready tasks (the one popped for it included): 1 while the queue
        # is shallow, so that an idle thread of the pool takes the next task at once
        share = (ready + 1) // max(1, worker.get("pool_threads") or 1)
        return max(1, min(want, share))

    def hold_first(self, worker_id, thread, first):
        """The batch's first task (claimed: RUNNING) gets an rseq too, the table entry where
        the worker holds its outcome while the reserved ones run: its copy's "hold"."""
        self.sync_thread(worker_id, thread)  # its last batch as the table tells it: exact now
        held = self.held.setdefault(worker_id, {})
        for task_id in [t for t, key in held.items() if key[0] == thread]:
            del held[task_id]  # taken from the table (or reported): its entry may be reused
        key = (worker_id, thread)
        rseq = self._next.get(key, 1)
        self._next[key] = rseq + 1
        held[first["id"]] = (thread, rseq)
        first["hold"] = rseq

    def reserve(self, worker_id, worker, thread, count, now):
        """Up to `count` READY tasks reserved for the worker's `thread` (after hold_first):
        their record copies as the worker runs them (status RUNNING, this attempt's
        worker_ids, "rseq")."""
        store = self.store
        queue, flows = store.queue, store.flows
        out = []
        for _ in range(count):
            record = queue.pop(now, worker["queues"])
            if record is None:
                break
            limit = record.get("limit")
            if limit is not None and limit.get("rate"):
                queue.push(record, now, keep_seq=True)  # its start counts when it starts
                break
            key = (worker_id, thread)
            rseq = self._next.get(key, 1)
            self._next[key] = rseq + 1
            worker["claimed"] += 1
            self.made += 1
            if limit is not None:
                flows.limits.take(record, now)  # holds its concurrency slot
            task_id = record["id"]
            self.by_task[task_id] = (worker_id, thread, rseq)
            self.by_worker.setdefault(worker_id, {})[task_id] = (thread, rseq)
            store.reserve_record(record, [worker_id, thread, rseq])
            out.append(self.copy(record))
        return out

    def copy(self, record):
        """The record as the worker that reserved it runs it (lock held)."""
        worker_id, _, rseq = self.by_task[record["id"]]
        copy = dict(record)
        del copy["reserved"]
        copy["status"] = RUNNING
        copy["worker_ids"] = record["worker_ids"] + [worker_id]
        copy["rseq"] = rseq
        if record.get("after"):
            copy["dependency_results"] = self.store.flows.deps.results_of(record)
        return copy

    # ---- a reservation starts, or goes back -----------------------------------------------------

    def begin(self, task_id, at):
        """The worker started reserved task `task_id` at `at` (its clock, this host): RUNNING
        from then on (TaskStore.start_reserved); its slot was taken when it was reserved."""
        worker_id, thread, rseq = self._drop(task_id)
        self.store.start_reserved(self.store.records[task_id], worker_id, at)
        # RUNNING now; its outcome may yet be held in the same entry
        self.held.setdefault(worker_id, {})[task_id] = (thread, rseq)

    def begin_reported(self, outcome, worker_id):
        """An outcome of a reserved task whose start the server has not seen yet: begin it at
        the start the worker reports. False when it is not this worker's reservation."""
        task_id = outcome["id"]
        held = self.by_task.get(task_id)
        if held is None or held[0] != worker_id or held[2] != outcome.get("rseq"):
            return False
        self.begin(task_id, outcome.get("started_at") or self.store.clock())
        return True

    def give_back(self, task_id, now):
        """A reservation that never started: READY in the queue at its place again."""
        worker_id, _, _ = self._drop(task_id)
        self.store.unreserve(self.store.records[task_id], worker_id, now, requeue=True)
        self.given_back += 1

    def _drop(self, task_id):
        """Forget a reservation (the record is changed by the caller): (worker, thread, rseq)."""
        held = self.by_task.pop(task_id)
        mine = self.by_worker.get(held[0])
        if mine is not None:
            mine.pop(task_id, None)
        return held

    def revoke(self, task_id):
        """Cancel a reservation (lock held): True when the worker will not run it (the
        reservation is gone and its slot free: end it as a pending task); False when it
        started already (or could not be told apart from started): it is RUNNING now."""
        worker_id, thread, rseq = self.by_task[task_id]
        table = self.tables.get(worker_id)
        entry = UNKNOWN if table is None else table.revoke(thread, rseq)
        if entry is None:
            self._drop(task_id)
            store = self.store
            store.unreserve(store.records[task_id], worker_id, store.clock(), requeue=False)
            return True
        self._resolve(task_id, worker_id, entry)  # started (or even finished) meanwhile
        return False

    def recall(self, worker_id):
        """The worker retires (or the server drains): its reservations that did not start go
        back to the queue for the other workers; it skips them (REVOKED)."""
        mine = self.by_worker.get(worker_id)
        table = self.tables.get(worker_id)
        if not mine or table is None:
            return
        now = self.store.clock()
        for task_id, (thread, rseq) in list(mine.items()):
            entry = table.revoke(thread, rseq)
            if entry is None:
                self.give_back(task_id, now)
            elif entry is not UNKNOWN:
                self._resolve(task_id, worker_id, entry)
            # UNKNOWN: the worker is inside its lock; the next sync tells

    # ---- what the workers started: read their tables ------------------------------------------

    def sync(self, worker_id, only=None):
        """Begin the reservations of `worker_id` (or just `only`, (thread, rseq) pairs) that
        the worker's table shows started. Never blocks; a busy lock means "next time"."""
        mine = self.by_worker.get(worker_id)
        table = self.tables.get(worker_id)
        if table is None or self.store.journal.failing:
            return
        held = self._live(worker_id)
        if only is not None:
            wanted = set(only)
            mine = {i: key for i, key in (mine or {}).items() if key in wanted}
            held = {i: key for i, key in held.items() if key in wanted}
        if mine or held:
            self._apply(worker_id, table, mine or {}, held)

    def _live(self, worker_id):
        """The worker's held entries whose task still runs there (the others pruned)."""
        held = self.held.get(worker_id)
        if not held:
            return {}
        running = self.store.running
        live = {i: key for i, key in held.items() if running.get(i) == worker_id}
        if len(live) != len(held):
            self.held[worker_id] = live
        return live

    def _apply(self, worker_id, table, mine, held, patience=0.0, assume=False):
        """What the table says of `mine` (reserved: id -> (thread, rseq)) and `held` (RUNNING
        batch tasks that may hold their outcome there: id -> (thread, rseq)): begin what
        started, finish what finished. UNKNOWN (the lock was busy): nothing, or with `assume`
        (a dead worker) each reserved one as started."""
        store = self.store
        running = store.running
        wanted = list(mine.values()) + list(held.values())
        entries = table.entries(wanted, patience)
        if not isinstance(entries, dict):  # UNKNOWN
            if assume:
                now = store.clock()
                for task_id in list(mine):
                    self.begin(task_id, now)
            return
        for task_id, key in list(mine.items()):
            entry = entries.get(key)
            if entry is not None:
                self._resolve(task_id, worker_id, entry)
        for task_id, key in held.items():
            entry = entries.get(key)
            if entry is not None and entry[0] == FINISHED and running.get(task_id) == worker_id:
                self._finished(task_id, worker_id, entry[2])

    def _resolve(self, task_id, worker_id, entry):
        """A reservation the table shows started, or finished (its outcome held there); or
        UNKNOWN: as started."""
        store = self.store
        if entry is UNKNOWN:
            self.begin(task_id, store.clock())
            return
        state, at, payload = entry
        self.begin(task_id, at or store.clock())
        if state == FINISHED:
            self._finished(task_id, worker_id, payload)

    def _finished(self, task_id, worker_id, payload):
        """The outcome a worker held in its table (it finished the task, its report had not
        come): taken as the report would be (once per task and attempt)."""
        try:
            outcome = pickle.loads(payload) if payload else None
        except Exception:
            outcome = None  # not readable: the task stays RUNNING (WorkerLost if its worker died)
        if isinstance(outcome, dict) and outcome.get("id") == task_id:
            self.store.finish_outcome(outcome, worker_id)

    def sync_task(self, task_id):
        """A view of one task: reserved (did it start?), or RUNNING from a batch (is its outcome
        held in its worker's table?)."""
        held = self.by_task.get(task_id)
        if held is not None:
            self.sync(held[0], [(held[1], held[2])])
            return
        worker_id = self.store.running.get(task_id)
        key = self.held.get(worker_id, {}).get(task_id) if worker_id is not None else None
        if key is not None:
            self.sync(worker_id, [key])

    def sync_ids(self, task_ids):
        """sync() each worker that holds some of `task_ids`, once (get_many)."""
        by_task, running, holding = self.by_task, self.store.running, self.held
        wanted: dict[str, list] = {}
        for task_id in task_ids:
            held = by_task.get(task_id)
            if held is not None:
                wanted.setdefault(held[0], []).append((held[1], held[2]))
            elif holding and (worker_id := running.get(task_id)) is not None:
                key = holding.get(worker_id, {}).get(task_id)
                if key is not None:
                    wanted.setdefault(worker_id, []).append(key)
        for worker_id, keys in wanted.items():
            self.sync(worker_id, keys)

    def sync_thread(self, worker_id, thread):
        """Before numbering a thread's new batch: what its last batch started and finished
        (outcomes may still be on their way, in a report) is taken from the table, so a reused
        entry hides none."""
        mine = self.by_worker.get(worker_id)
        wanted = [key for key in (mine or {}).values() if key[0] == thread]
        wanted += [key for key in self._live(worker_id).values() if key[0] == thread]
        if wanted:
            self.sync(worker_id, wanted)

    def sync_all(self):
        workers = {w for w, mine in self.by_worker.items() if mine}
        workers.update(w for w in list(self.held) if self._live(w))
        for worker_id in workers:
            self.sync(worker_id)

    # ---- views -------------------------------------------------------------------------------

    def add_counts(self, counts):
        """Reserved tasks are READY in health's queue counts ({queue: {"ready", ...}})."""
        records = self.store.records
        for task_id in self.by_task:
            queue = records[task_id]["queue"]
            entry = counts.setdefault(queue, {"ready": 0, "deferred": 0})
            entry["ready"] += 1
        return counts

    def report(self):
        """For health: reservations now, made and given back since the server started."""
        return {"reserved": len(self.by_task), "reserved_total": self.made,
                "given_back": self.given_back}

    def of_worker(self, worker_id):
        mine = self.by_worker.get(worker_id)
        return len(mine) if mine else 0

    # ---- a STATE_DIR restore ------------------------------------------------------------------

    def restored(self, records, started, now):
        """Before the restored records are loaded (lock held): each READY record that was
        reserved when the previous server stopped is either READY again (its worker never
        started it) or RUNNING (it started, or its start table could not tell), which ends it
        WorkerLost with the tasks that were RUNNING: nothing lost, nothing run twice.
        `started(worker, thread, rseq)` -> start time, None or UNKNOWN. Returns the ids whose
        resolution must be journaled (journal_restored(), once a journal is attached)."""
        changed = []
        for record in records:
            held = record.get("reserved")
            if not held or record["status"] != "READY":
                if "reserved" in record:
                    del record["reserved"]  # a None left by an earlier journal entry
                continue
            worker_id, thread, rseq = held
            at = UNKNOWN if started is None else started(worker_id, thread, rseq)
            del record["reserved"]
            if at is not None:
                at = now if at is UNKNOWN else at
                record["status"] = RUNNING
                if record["started_at"] is None:
                    record["started_at"] = at
                record["last_attempted_at"] = at
                record["worker_ids"] = record["worker_ids"] + [worker_id]
            changed.append(record["id"])
        self._restored = changed
        return changed

    def journal_restored(self):
        """Journal what restored() decided (after attach: a second crash replays the same)."""
        store = self.store
        for task_id in self._restored:
            record = store.records.get(task_id)
            if record is None:
                continue
            record["reserved"] = None
            store.journal.set(record, "status", "started_at", "last_attempted_at",
                              "worker_ids", "reserved")
            del record["reserved"]
        self._restored = []
