"""Prefetch in a worker thread: one batch claim for several tasks, each reserved task's real
start published in the start table, each outcome reported without waiting for the batch's end.

    thread loop (process.py runs it when the spec gives a start table, "starts"):
        batch = BatchClaimer.next(outcomes held)   claim_batch(worker, outcomes, wait, thread,
                                                   seq, want): sent again until answered
            [the task to run now ("hold"), reserved tasks ("rseq")...] | None | STOP
        for each record, in order:
            reserved: StartTable.step(thread, finished=the last outcome held, start=rseq,
                server pid) (protocol/starts.py), one lock hold: the last task's outcome
                written to the table (FINISHED: so that it survives this process, should the
                next task kill it), then this one STARTED -> its real start (started_at,
                TIME_LIMIT count from it), REVOKED (cancelled, or given back to the queue:
                skipped), GONE (our server died: run nothing more)
            execute(record) -> outcome (+ "started_at" and "rseq" of a reserved task)
            the batch's last outcome rides on the next claim; the others are held (in the
            table, and for the Reporter); one that does not fit an entry (PAYLOAD bytes
            pickled) is reported at once, before the next task starts
        Reporter (one thread per process): an outcome held REPORT_AFTER while its thread runs
            the next task of its batch goes out with `report` (sent again until answered), so a
            long task never holds back the outcome of a short one before it; the rest ride on
            the next batch claim of any thread.

A server that does not expose claim_batch (it cannot: it gave no start table) is answered by
falling back to one task per claim (worker/claims.py), as for any older server.
"""

import logging
import os
import pickle
import threading
import time
import traceback

from ..protocol.starts import GONE, PAYLOAD, REVOKED
from ..protocol.status import FAILED, STOP, class_path
from .claims import _not_exposed, send_until_answered

REPORT_AFTER = 0.005  # seconds an outcome may wait for its batch's next claim
logger = logging.getLogger("django_tasks_shared.worker")
FALLBACK = "fallback"  # claim_batch not exposed: one task per claim from now on


def _send_until_answered(client, worker_id, who, what, method, *args):
    """client.call(method, ...) until the server answers (worker/claims.py's
    send_until_answered): both calls here are idempotent on the server."""
    return send_until_answered(lambda: client.call(method, *args), worker_id, who, what)[0]


class Reporter:
    """Outcomes held between two batch claims; sent on their own when they wait too long."""

    def __init__(self, client, worker_id, delay=REPORT_AFTER):
        self.client = client
        self.worker_id = worker_id
        self.delay = delay
        self.cond = threading.Condition()
        self.held: list = []
        self.since = 0.0        # monotonic time the oldest held outcome was held
        self.idle = True        # waiting without a timeout: hold() must wake it
        self.sent = 0           # `report` round trips made (tests, profiles)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="outcome-reporter", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def hold(self, outcome):
        with self.cond:
            if not self.held:
                self.since = time.monotonic()
            self.held.append(outcome)
            if self.idle:
                self.cond.notify()

    def take(self):
        """Every held outcome, for the next batch claim."""
        with self.cond:
            held, self.held = self.held, []
            return held

    def stop(self):
        """Send what is still held, then stop the thread."""
        with self.cond:
            self._stopping = True
            self.cond.notify()
        self._thread.join(timeout=30)

    def _run(self):
        cond = self.cond
        while True:
            with cond:
                quiet = 0.0
                while not self._stopping:
                    if self.held:
                        due = self.since + self.delay
                        now = time.monotonic()
                        if now >= due:
                            break
                        cond.wait(due - now)
                        quiet = 0.0
                    elif quiet >= self.delay:  # a whole period without outcomes: sleep
                        self.idle = True
                        cond.wait()
                        self.idle = False
                        quiet = 0.0
                    else:  # busy: look again in a period, with no wake-up per outcome
                        self.idle = False
                        cond.wait(self.delay)
                        quiet += self.delay
                held, self.held = self.held, []
                stopping = self._stopping
            if held:
                self.sent += 1
                _send_until_answered(self.client, self.worker_id, "outcome reporter", "report",
                                     "report", self.worker_id, held)
            if stopping:
                return


class BatchClaimer:
    """One worker thread's batch claims: the same outcomes and the same seq again until the
    server answers (as worker/claims.py's Claimer)."""

    def __init__(self, client, worker_id, thread, wait, want):
        self.client = client
        self.worker_id = worker_id
        self.thread = thread
        self.wait = wait
        self.want = want
        self.seq = 0

    def next(self, outcomes):
        """A batch (list of records), None or STOP; FALLBACK if the server has no batches."""
        try:
            got = _send_until_answered(
                self.client, self.worker_id, f"thread {self.thread}",
                "report" if outcomes else "claim", "claim_batch",
                self.worker_id, outcomes, self.wait, self.thread, self.seq, self.want)
        except AttributeError as exc:
            # only on the first claim: a server never changes under its workers
            if not _not_exposed(exc) or self.seq or outcomes:
                raise
            return FALLBACK
        self.seq += 1
        return got


def run_thread(client, worker_id, thread, sender, execute, max_payload, table, server_pid,
               reporter, wait):
    """A task thread's loop with prefetch. Returns None at STOP (or when the server is gone),
    FALLBACK when the server takes no batch claims (its first claim): the caller goes on with
    one task per claim."""
    claimer = BatchClaimer(client, worker_id, thread, wait, table.capacity)
    outcomes: list = []
    while True:
        outcomes += reporter.take()
        batch = claimer.next(outcomes)
        if batch == FALLBACK:
            return FALLBACK
        outcomes = []
        if batch is None:
            continue
        if batch == STOP:
            return None
        last = len(batch) - 1
        finished = None  # (rseq, pickled outcome): held, written with the next step
        for i, record in enumerate(batch):
            rseq = record.get("rseq")
            if rseq is not None:
                at = _step(table, thread, finished, rseq, server_pid)
                finished = None
                if at is REVOKED:
                    continue  # cancelled, or given back to the queue for another worker
                if at is GONE:
                    return None  # our server died: the watchdog ends this process
                if record["started_at"] is None:
                    record["started_at"] = at
                record["last_attempted_at"] = at
            outcome = _run(execute, record, sender, max_payload, client)
            outcome["attempt"] = len(record["worker_ids"])
            if rseq is not None:
                outcome["started_at"], outcome["rseq"] = record["last_attempted_at"], rseq
            if i == last:
                outcomes.append(outcome)  # the next claim goes out now: it carries it
                continue
            held = rseq if rseq is not None else record.get("hold")
            payload = pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
            if held is not None and len(payload) <= PAYLOAD:
                finished = (held, payload)  # into the table before the next task starts
                reporter.hold(outcome)
            else:  # too large for the table (a big return value): reported before going on
                _send_until_answered(client, worker_id, f"thread {thread}", "report",
                                     "report", worker_id, [outcome])


def _step(table, thread, finished, rseq, server_pid):
    try:
        return table.step(thread, finished, rseq, server_pid)
    except Exception:  # the table cannot be locked or written: nothing is known of this start,
        # so run nothing more; the supervisor ends what this worker started (WorkerLost) and
        # puts its other reservations back in the queue
        logger.exception("worker: the start table failed; exiting")
        os._exit(4)


def _run(execute, record, sender, max_payload, client):
    try:
        return execute(record, sender, max_payload, client)
    except BaseException as exc:  # a signal receiver raised (even SystemExit): the task still
        # gets an outcome and the thread lives on
        return {"id": record["id"], "status": FAILED, "finished_at": time.time(),
                "errors": [{"exception_class_path": class_path(type(exc)),
                            "traceback": traceback.format_exc()}]}
