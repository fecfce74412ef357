"""Idempotent claims: a worker thread that got no answer sends the same claim again.

    worker thread ── report_and_claim(worker, outcome, wait, thread, seq) ──> TaskStore.claim
        token (thread, seq): seq counts the claims of that thread the worker saw answered
        repeat(worker, token): the claim answered with a task for this very token before, and
            that task still RUNNING here on the same attempt -> the same task again (a copy of
            its record, as it stands), not a second one
        note(worker, token, record): a task handed out for a token (lock held)
        forget(worker): the worker exited (its memo goes with it)

The reply of a claim can be lost after the server handed a task out (a stall past the worker's
socket timeout, a connection cut): without the memo, the task stays RUNNING under a worker that
never saw it, until that worker dies and the task ends WorkerLost (or runs twice, with a retry
policy on WorkerLost). One entry per worker thread: (seq, task id, attempt).

A batch claim (prefetch, claim_batch) is remembered the same way: note_batch / repeat_batch
give a repeated batch claim the same batch, its first task if still running here and its
reserved ones if still reserved here (reservations.py); the rest was ended meanwhile.

Reports are the other half: TaskStore._finish accepts an outcome once per task and attempt.
"""


class ClaimMemo:
    def __init__(self, store):
        self.store = store
        self.last: dict[str, dict[int, tuple[int, str, int]]] = {}  # worker -> thread -> memo
        self.batches: dict[str, dict[int, tuple[int, list]]] = {}  # the same, of batch claims

    def repeat(self, worker_id, token):
        """The record copy to hand out again for a repeated claim, or None (lock held)."""
        thread, seq = token
        memo = self.last.get(worker_id, {}).get(thread)
        if memo is None or memo[0] != seq:
            return None
        task_id, attempt = memo[1], memo[2]
        store = self.store
        if store.running.get(task_id) != worker_id:
            return None  # ended since (time limit, cancel): this claim gets a new task
        record = store.records[task_id]
        if len(record["worker_ids"]) != attempt:
            return None
        return dict(record)

    def note(self, worker_id, token, record):
        self.last.setdefault(worker_id, {})[token[0]] = (
            token[1], record["id"], len(record["worker_ids"]))

    def note_batch(self, worker_id, token, records):
        """A batch handed out for a token (prefetch): the first task (running) and the
        reserved ones, (id, attempt) and (id, rseq)."""
        self.batches.setdefault(worker_id, {})[token[0]] = (token[1], [
            (r["id"], "rseq" in r, r["rseq"] if "rseq" in r else len(r["worker_ids"]),
             r.get("hold")) for r in records])

    def repeat_batch(self, worker_id, token):
        """The batch to hand out again for a repeated batch claim, or None (lock held): its
        tasks still running (the first) or still reserved here, as they stand now."""
        memo = self.batches.get(worker_id, {}).get(token[0])
        if memo is None or memo[0] != token[1]:
            return None
        store = self.store
        reservations = store.reservations
        out = []
        for task_id, reserved, number, hold in memo[1]:
            if reserved:
                if reservations.by_task.get(task_id) == (worker_id, token[0], number):
                    out.append(reservations.copy(store.records[task_id]))
            elif store.running.get(task_id) == worker_id and \
                    len(store.records[task_id]["worker_ids"]) == number:
                record = store.records[task_id]
                copy = dict(record)
                if hold is not None:
                    copy["hold"] = hold
                if record.get("after"):
                    copy["dependency_results"] = store.flows.deps.results_of(record)
                out.append(copy)
        return out or None

    def forget(self, worker_id):
        self.last.pop(worker_id, None)
        self.batches.pop(worker_id, None)
