"""TaskStore's part of periodic schedules: the run notes and the health view (a mixin).

    scheduler.Scheduler (server process) --enqueue_scheduled(record, key, run)--> TaskStore
        under the store lock: _enqueue(record) + durable[key] = {due, id, enqueued_at, error}
        + _log_durable(key) (so with a STATE_DIR the last run survives restarts)
    TaskStore.health() --_schedule_report()--> each schedule's next run, last run, its status

Kept apart from store.py so that module stays about the queue; the methods use its lock and its
internals (`_enqueue`, `_records`, `durable`) exactly as TaskStore's own methods do.
"""

from .exceptions import QueueFull


class ScheduleStateMixin:
    def enqueue_scheduled(self, record, key, run):
        """Enqueue a schedule's run and note it as durable[key] = run + result id, atomically:
        a restart can never see the run without the note (a double run) or the reverse.
        A full queue still notes the slot (with the error) and re-raises, so the slot is
        skipped, not retried in a loop; a draining server notes nothing (the slot is missed)."""
        with self._lock:
            try:
                enqueued_at = self._enqueue(record)
            except QueueFull as exc:
                self.durable[key] = dict(run, id=None, enqueued_at=None, error=str(exc))
                self._log_durable(key)
                raise
            self.durable[key] = dict(run, id=record["id"], enqueued_at=enqueued_at, error=None)
            self._log_durable(key)
            return enqueued_at

    def durable_value(self, key):
        with self._lock:
            value = self.durable.get(key)
            return None if value is None else dict(value)

    def set_schedules(self, schedules):
        """The scheduler's view for health: name -> {task, when, next_run, durable key}."""
        with self._lock:
            self._schedules = {name: dict(info) for name, info in schedules.items()}

    # lock held (called from TaskStore.health)
    def _schedule_report(self):
        """Each schedule with its next run and its last run's result id and status."""
        report = []
        for name, info in self._schedules.items():
            last = self.durable.get(info["key"])
            if last is not None:
                record = self._records.get(last.get("id")) if last.get("id") else None
                last = dict(last, status=None if record is None else record["status"])
            report.append({"name": name, "task": info["task"], "when": info["when"],
                           "next_run": info["next_run"], "last_run": last})
        return report
