"""A worker thread's claims and reports, kept until the server answers them.

    Claimer.next(outcome) ── report_and_claim(worker, outcome, wait, thread, seq) ──> server
        answered: seq += 1; the next task (a RUNNING record), None (nothing yet) or STOP
        ServerUnavailable (no answer: a stall, a lost reply; or the server refused the report,
        e.g. StorageUnavailable while its disk is full):
            the SAME outcome and the SAME seq again on a new connection, after a back-off
            (BACKOFF_FIRST doubling to BACKOFF_MAX), until the server answers. The worker never
            exits for it: the watchdog in process.py ends it when the server process is gone.

Both halves are idempotent on the server (store/claims.py and TaskStore._finish): a report is
accepted once per task and attempt (the outcome carries the attempt number), and a claim whose
(thread, seq) was answered already gets the task it was handed then, if that is still running
here, instead of a second one. So a lost reply neither drops a finished task's outcome nor
leaves a task RUNNING that this worker never saw.

A server of the previous release (0.1.0) does not expose report_and_claim: the claimer falls
back to finish_and_claim(worker, outcome, wait) for the whole process, and there a call without
an answer ends the worker as before (exit code 4: the supervisor fails what it ran with
WorkerLost), since that server could have handed it a task it never saw.
"""

import logging
import os
import threading
import time

from ..exceptions import ServerUnavailable

BACKOFF_FIRST = 0.05  # seconds before the first resend of an unanswered claim
BACKOFF_MAX = 1.0     # the longest pause between two resends
logger = logging.getLogger("django_tasks_shared.worker")

_legacy = threading.Event()  # the server does not expose report_and_claim (0.1.0)


def _not_exposed(exc):
    return isinstance(exc, AttributeError) and "not exposed" in str(exc)


def send_until_answered(send, worker_id, who, what, sleep=time.sleep, unanswered=None):
    """send() until the server answers: (its answer, how many times it was sent again). On
    ServerUnavailable (a stall, a lost reply, a refused change) `unanswered(exc)` is called
    first, then the same call goes out again after BACKOFF_FIRST doubling to BACKOFF_MAX; the
    log says so once when it begins ("sending the <what> again until it answers": the stress
    harness counts these lines) and once when it ends. `who`: "thread 2", "outcome reporter"."""
    pause, since, resends = BACKOFF_FIRST, None, 0
    while True:
        try:
            got = send()
        except ServerUnavailable as exc:
            if unanswered is not None:
                unanswered(exc)
            if since is None:
                since = time.monotonic()
                logger.warning("worker %s %s: %s -- sending the %s again until it answers",
                               worker_id, who, str(exc).rstrip("."), what)
            resends += 1
            sleep(pause)
            pause = min(pause * 2, BACKOFF_MAX)
            continue
        if since is not None:
            logger.warning("worker %s %s: the task server answered after %.1f s", worker_id,
                           who, time.monotonic() - since)
        return got, resends


class Claimer:
    """The claim loop's side of the wire for ONE worker thread."""

    def __init__(self, client, worker_id, thread, wait, legacy=_legacy, sleep=time.sleep):
        self.client = client
        self.worker_id = worker_id
        self.thread = thread          # this thread's number in the worker: the claim token's key
        self.wait = wait              # seconds the server may hold a claim
        self.seq = 0                  # claims answered so far
        self.resends = 0              # claims sent again (for tests and logs)
        self.legacy = legacy
        self.sleep = sleep
        self.who = f"thread {thread}"  # for the log

    def next(self, outcome, record=None):
        """Report `outcome` (of `record`, the task this thread ran; None at first) and claim the
        next task: a record, None (nothing to do yet) or STOP. Returns only once the server
        answered."""
        if outcome is not None and record is not None:
            outcome["attempt"] = len(record["worker_ids"])  # accepted once per attempt
        got, resends = send_until_answered(
            lambda: self._send(outcome), self.worker_id, self.who,
            "report" if outcome is not None else "claim", sleep=self.sleep,
            unanswered=self._unanswered)
        self.resends += resends
        self.seq += 1
        return got

    def _unanswered(self, exc):
        if self.legacy.is_set():
            # An old server may have handed us a task we never saw: exit, so that the
            # supervisor fails it (WorkerLost) and replaces this worker.
            logger.error("worker %s: no answer from the task server: %s", self.worker_id, exc)
            os._exit(4)

    def _send(self, outcome):
        if not self.legacy.is_set():
            try:
                return self.client.call("report_and_claim", self.worker_id, outcome, self.wait,
                                        self.thread, self.seq)
            except AttributeError as exc:
                if not _not_exposed(exc):
                    raise
                self.legacy.set()  # nothing was done: the old method, from now on
                logger.info("worker %s: the task server predates report_and_claim; claiming "
                            "with finish_and_claim", self.worker_id)
        return self.client.call("finish_and_claim", self.worker_id, outcome, self.wait)
