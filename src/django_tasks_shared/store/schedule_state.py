"""The store's part of periodic schedules: each schedule's runs, noted durably, and its view in
health.

    schedules/scheduler.py (server thread) ──enqueue_scheduled(record, key, run, overlap)──>
        under the store lock: enqueue + durable[key] = {due, id, enqueued_at, error}, journaled
        (with a STATE_DIR the last run survives restarts: no double run, no lost note)
        overlap False and the last run still pending or running: the slot is skipped, noted
        as {due: this slot, id: the run still going, skipped: n, skipped_due}
        a @unique task whose key is held: the holder is noted as the slot's run
    TaskStore.health() ──report()──> each schedule's next run, last run and its status
"""

from ..exceptions import QueueFull
from ..protocol.status import READY, RUNNING


class ScheduleState:
    def __init__(self, store):
        self.store = store
        self.schedules = {}  # schedule name -> info for health (scheduler.py)

    def enqueue_scheduled(self, record, key, run, overlap=True):
        """Enqueue a schedule's run and note it as durable[key] = run + result id, atomically:
        a restart can never see the run without the note (a double run) or the reverse.
        A full queue still notes the slot (with the error) and re-raises, so the slot is
        skipped, not retried in a loop; a draining server notes nothing (the slot is missed).
        Returns the run's enqueued_at, or None when the slot was skipped (overlap False)."""
        store = self.store
        with store.lock:
            store.journal.check()  # a full disk: the run is skipped, nothing is noted
            last = store.durable.get(key) or {}
            skipped = last.get("skipped", 0)
            if not overlap and last.get("id"):
                previous = store.records.get(last["id"])
                if previous is not None and previous["status"] in (READY, RUNNING):
                    store.durable[key] = dict(last, due=run["due"], skipped=skipped + 1,
                                              skipped_due=run["due"])
                    store.journal.durable(key)
                    return None
            if "unique" in record:  # the key's holder stands for this run (store/unique.py)
                holder = store.flows.unique.holder(record)
                if holder is not None:
                    store.durable[key] = dict(run, id=holder["id"], enqueued_at=holder[
                        "enqueued_at"], error=None, **_skips(skipped))
                    store.journal.durable(key)
                    return holder["enqueued_at"]
            try:
                enqueued_at = store.enqueue_locked(record)
            except QueueFull as exc:
                store.durable[key] = dict(run, id=None, enqueued_at=None, error=str(exc),
                                          **_skips(skipped))
                store.journal.durable(key)
                raise
            store.durable[key] = dict(run, id=record["id"], enqueued_at=enqueued_at, error=None,
                                      **_skips(skipped))
            store.journal.durable(key)
            return enqueued_at

    def durable_value(self, key):
        with self.store.lock:
            value = self.store.durable.get(key)
            return None if value is None else dict(value)

    def set_schedules(self, schedules):
        """The scheduler's view for health: name -> {task, when, next_run, durable key}."""
        with self.store.lock:
            self.schedules = {name: dict(info) for name, info in schedules.items()}

    def report(self):
        """Each schedule with its next run and its last run's result id and status (lock held,
        from TaskStore.health)."""
        report = []
        durable, records = self.store.durable, self.store.records
        for name, info in self.schedules.items():
            last = durable.get(info["key"])
            if last is not None:
                record = records.get(last.get("id")) if last.get("id") else None
                last = dict(last, status=None if record is None else record["status"])
            item = {"name": name, "task": info["task"], "when": info["when"],
                    "next_run": info["next_run"], "last_run": last}
            if not info.get("overlap", True):  # "overlap": False, and the slots it skipped
                item.update(overlap=False, skipped=(last or {}).get("skipped", 0))
            report.append(item)
        return report


def _skips(count):
    """The note's "skipped" count, only once a slot was skipped (notes keep their 0.2 shape)."""
    return {"skipped": count} if count else {}
