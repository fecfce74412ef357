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

Reports are the other half: TaskStore._finish accepts an outcome once per task and attempt.
"""


class ClaimMemo:
    def __init__(self, store):
        self.store = store
        self.last: dict[str, dict[int, tuple[int, str, int]]] = {}  # worker -> thread -> memo

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

    def forget(self, worker_id):
        self.last.pop(worker_id, None)
