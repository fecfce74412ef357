"""The store's part of periodic schedules: each schedule's runs, noted durably, and its view in
health.

    schedules/scheduler.py (server thread) ──enqueue_scheduled(record, key, run)──>
        under the store lock: enqueue + durable[key] = {due, id, enqueued_at, error}, journaled
        (with a STATE_DIR the last run survives restarts: no double run, no lost note)
    TaskStore.health() ──report()──> each schedule's next run, last run and its status
"""

from ..exceptions import QueueFull


class ScheduleState:
    def __init__(self, store):
        self.store = store
        self.schedules = {}  # schedule name -> info for health (scheduler.py)

    def enqueue_scheduled(self, record, key, run):
        """Enqueue a schedule's run and note it as durable[key] = run + result id, atomically:
        a restart can never see the run without the note (a double run) or the reverse.
        A full queue still notes the slot (with the error) and re-raises, so the slot is
        skipped, not retried in a loop; a draining server notes nothing (the slot is missed)."""
        store = self.store
        with store.lock:
            store.journal.check()  # a full disk: the run is skipped, nothing is noted
            try:
                enqueued_at = store.enqueue_locked(record)
            except QueueFull as exc:
                store.durable[key] = dict(run, id=None, enqueued_at=None, error=str(exc))
                store.journal.durable(key)
                raise
            store.durable[key] = dict(run, id=record["id"], enqueued_at=enqueued_at, error=None)
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
            report.append({"name": name, "task": info["task"], "when": info["when"],
                           "next_run": info["next_run"], "last_run": last})
        return report
