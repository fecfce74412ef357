"""Unique tasks (`@unique`): at most one holder of a key, decided under the store's lock.

    record["unique"] = {"key", "until": "finished" | "started"}   (computed by the client)

    enqueue_workflow(record) ──holder(record)──> the task holding the key -> returned instead;
                                                 nothing new is stored
                             └─ none ─> stored, hold(record): it holds the key
    TaskStore._start  ──started(record)──> until="started": the key is free again
    TaskStore._retry  ──requeued(record)─> until="started": pending again, it takes the key
                                           back if nobody took it meanwhile
    TaskStore._ended  ──ended(record)────> the key is free (any end: success, failure, cancel,
                                           WorkerLost, time limit; no TTL, nothing to expire)

A holder is pending (READY, deferred, or waiting for its dependencies) or, with
until="finished", RUNNING. Retries of the holder keep the key (with until="finished" the task
never stops holding it between attempts). Rebuilt from the records on a STATE_DIR restore.
No lock of its own: the store's lock is held by every caller.
"""

from ..protocol.status import READY, RUNNING


class UniqueKeys:
    def __init__(self, store):
        self.store = store           # its records are read here (replaced whole by a restore)
        self.holders: dict[str, str] = {}   # key -> id of the task holding it

    def __len__(self):
        return len(self.holders)

    def holder(self, record):
        """The record holding `record`'s key, or None."""
        task_id = self.holders.get(record["unique"]["key"])
        return None if task_id is None else self.store.records.get(task_id)

    def hold(self, record):
        self.holders[record["unique"]["key"]] = record["id"]

    def started(self, record):
        if record["unique"]["until"] == "started":
            self._release(record)

    def requeued(self, record):
        key = record["unique"]["key"]
        if record["unique"]["until"] == "started" and key not in self.holders:
            self.holders[key] = record["id"]

    def ended(self, record):
        self._release(record)

    def _release(self, record):
        key = record["unique"]["key"]
        if self.holders.get(key) == record["id"]:
            del self.holders[key]

    def rebuild(self, records):
        """After a STATE_DIR restore: the holders, from the pending and running records (in
        their queue order, so that the first one queued holds a key if two claim it)."""
        holding = [r for r in records if "unique" in r and (
            r["status"] == READY or (r["status"] == RUNNING and
                                     r["unique"]["until"] == "finished"))]
        for record in sorted(holding, key=lambda r: r.get("seq", 0), reverse=True):
            self.holders[record["unique"]["key"]] = record["id"]

    def report(self, limit=50):
        """For health: how many keys are held, and some of them with their holder."""
        rows = []
        for key, task_id in list(self.holders.items())[:limit]:
            record = self.store.records.get(task_id)
            rows.append({"key": key, "id": task_id,
                         "status": None if record is None else record["status"]})
        return {"held": len(self.holders), "keys": rows}
