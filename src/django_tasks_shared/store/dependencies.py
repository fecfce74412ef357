"""Dependencies (`after(results, task, ...)`): a task that runs once all its parents SUCCEEDED.

    record["after"] = [parent ids]                               (the client's after())
    enqueue_workflow: check(ids)     ── an unknown, evicted or expired parent: UnknownDependency
                                        (the client raises TaskResultDoesNotExist), nothing stored
                      attach(record) ── every parent SUCCESSFUL: "ready" (into the queue)
                                     ── a parent FAILED: ("failed", parent) -> ended at once,
                                        FAILED DependencyFailed, never run
                                     ── else "blocked": READY, outside the queue, counted in
                                        `waiting` (parents not finished), listed in `children`
    TaskStore._ended(parent) ──ended(record)──> SUCCESSFUL: each child's count - 1; at 0 the
                                               child goes into the queue (unblock)
                                            └─ FAILED (cancelled too): each blocked child ends
                                               FAILED DependencyFailed naming the parent, and so
                                               do its own children (a work list: no recursion,
                                               a chain of any length)
    pins: a parent's result is not evicted (MAX_RESULTS) nor expired (RESULT_TTL) while a child
          of it has not ended: the child reads it when it runs (TaskStore._start puts the
          parents' return values into the claimed copy: worker/workflow.py)

Rebuilt from the records on a STATE_DIR restore. No lock of its own: the store's lock is held.
"""

from collections import deque

from ..exceptions import UnknownDependency
from ..protocol.status import DEPENDENCY_FAILED, FAILED, FINISHED, READY, SUCCESSFUL


class Dependencies:
    def __init__(self, store):
        self.store = store
        self.waiting: dict[str, int] = {}       # blocked child id -> parents not finished
        self.children: dict[str, list[str]] = {}  # parent id -> ids of children blocked on it
        self.pins: dict[str, int] = {}          # parent id -> children not ended
        self._failing: deque = deque()          # (child id, parent record) to end (ended())
        self._cascading = False

    def __len__(self):
        return len(self.waiting)

    # ---- enqueue ---------------------------------------------------------------------------

    def check(self, parent_ids):
        """Every parent must be known (lock held, before anything is stored)."""
        for parent_id in parent_ids:
            if self.store.lookup(parent_id) is None:
                raise UnknownDependency(parent_id, (
                    f"after(): no task result {parent_id} in the task server (unknown, evicted "
                    f"past MAX_RESULTS, or expired past RESULT_TTL); nothing was enqueued"))

    def attach(self, record):
        """A new record with parents: pins them; "ready", ("failed", parent record) or
        "blocked" (see the module docstring)."""
        records = self.store.records
        pending, failed = [], None
        for parent_id in record["after"]:
            self.pins[parent_id] = self.pins.get(parent_id, 0) + 1
            parent = records[parent_id]
            if parent["status"] == SUCCESSFUL:
                continue
            if parent["status"] == FAILED:
                failed = failed or parent
            else:
                pending.append(parent_id)
        if failed is not None:
            return ("failed", failed)
        if not pending:
            return "ready"
        self._block(record["id"], pending)
        return "blocked"

    def _block(self, child_id, parent_ids):
        self.waiting[child_id] = len(parent_ids)
        for parent_id in parent_ids:
            self.children.setdefault(parent_id, []).append(child_id)

    # ---- a task ended (lock held) ----------------------------------------------------------

    def ended(self, record):
        """`record` finished (any way): unpin its parents; unblock or fail its children."""
        if "after" in record:
            self._unpin(record["after"])
        kids = self.children.pop(record["id"], None)
        if not kids:
            return
        if record["status"] == SUCCESSFUL:
            for child_id in kids:
                left = self.waiting.get(child_id)
                if left is None:
                    continue  # ended meanwhile (cancelled, or another parent failed)
                if left > 1:
                    self.waiting[child_id] = left - 1
                else:
                    del self.waiting[child_id]
                    self.store.unblock(self.store.records[child_id])
            return
        self._failing.extend((child_id, record) for child_id in kids)
        if self._cascading:
            return  # the loop below, further up the stack, takes them
        self._cascading = True
        try:
            while self._failing:
                child_id, parent = self._failing.popleft()
                child = self.store.records.get(child_id)
                if child is None or child_id not in self.waiting or child["status"] != READY:
                    continue
                self.store.end_pending(child, DEPENDENCY_FAILED, failure_text(child, parent))
        finally:
            self._cascading = False

    def forget_blocked(self, record):
        """A blocked record ends without running (a cancel, a failed parent): True if it was
        blocked (it is in no queue)."""
        return self.waiting.pop(record["id"], None) is not None

    def _unpin(self, parent_ids):
        store = self.store
        for parent_id in parent_ids:
            left = self.pins.get(parent_id, 0) - 1
            if left > 0:
                self.pins[parent_id] = left
                continue
            self.pins.pop(parent_id, None)
            store.unpinned(parent_id)

    def pinned(self, task_id):
        return task_id in self.pins

    def results_of(self, record):
        """{parent id: return value} of a record about to run, in the order of `after`."""
        records = self.store.records
        return {pid: (parent["return_value"] if (parent := records.get(pid)) else None)
                for pid in record["after"]}

    # ---- restore -----------------------------------------------------------------------------

    def rebuild(self, records):
        """After a STATE_DIR restore: pins, and which pending records are blocked. Returns
        (blocked ids, ids of pending children whose parent failed or is gone: settle() ends
        them once a journal is attached)."""
        by_id = self.store.records
        doomed = []
        for record in records:
            if "after" not in record:
                continue
            if record["status"] not in FINISHED:
                for parent_id in record["after"]:
                    self.pins[parent_id] = self.pins.get(parent_id, 0) + 1
            if record["status"] != READY:
                continue
            parents = [by_id.get(pid) for pid in record["after"]]
            if any(p is None or p["status"] == FAILED for p in parents):
                doomed.append(record["id"])
                continue
            pending = [p["id"] for p in parents if p is not None and p["status"] != SUCCESSFUL]
            if pending:
                self._block(record["id"], pending)
        return doomed

    def settle(self, doomed):
        """End the restored children whose parent failed (or is gone) before the crash let
        the server end them (lock held, journal attached)."""
        records = self.store.records
        for child_id in doomed:
            child = records.get(child_id)
            if child is None or child["status"] != READY:
                continue
            parent = next((p for pid in child["after"]
                           if (p := records.get(pid)) is None or p["status"] == FAILED), None)
            self.waiting[child_id] = 1  # so that end_pending takes it out of no queue
            text = (failure_text(child, parent) if parent is not None else
                    f"{DEPENDENCY_FAILED}: task {child_id} did not run: a task it waited for "
                    f"is no longer held by the server\n")
            self.store.end_pending(child, DEPENDENCY_FAILED, text)


def failure_text(child, parent):
    """The DependencyFailed text of `child`, naming the parent that did not succeed."""
    errors = parent.get("errors") or []
    cause = errors[-1]["exception_class_path"] if errors else parent["status"]
    return (f"{DEPENDENCY_FAILED}: task {child['id']} did not run: its dependency "
            f"{parent['id']} ({parent['task']}) ended {parent['status']} ({cause})\n")
