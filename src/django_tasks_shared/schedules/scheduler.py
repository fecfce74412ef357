"""The scheduler thread of the server: enqueues OPTIONS["SCHEDULE"] entries when they are due.

    Config.schedules (validated, tasks resolved by the process that started the server)
      -> start(): each entry's last run from store.durable["schedule:<name>"] (kept across
                  restarts with a STATE_DIR) -> its next due time
      -> loop: sleep until the earliest due time (at most MAX_SLEEP, so a stop or a wall-clock
               jump is noticed) -> for each due entry: new_record (as backend.enqueue builds it)
               -> store.schedules.enqueue_scheduled(record, key, run) (enqueue + note, one lock)
               -> next due time strictly after now

Only the server enqueues schedules, and there is one server per address: one run per due time
however many web processes use the backend (no per-process scheduler to double-run).

A due time the server missed (it was down, or stalled) gives ONE run as soon as it can, not one
per missed slot: the next due time is always computed after *now*. Due times are wall-clock
(time.time()); cron entries follow their time zone, DST included (cronsim).

An entry with "overlap": False skips a due slot while its previous run is still pending or
running (decided under the store's lock, counted in its note, shown in health). An entry whose
task is @unique / @limit carries the record fields its resolve computed (resolve.py).
"""

import logging
import secrets
import threading
import time

from ..exceptions import QueueFull, ServerUnavailable
from ..protocol.records import new_record
from . import entries as schedules

logger = logging.getLogger("django_tasks_shared.scheduler")

MAX_SLEEP = 5.0  # seconds; bounds each wait so a stop or a clock change is seen soon
KEY_PREFIX = "schedule:"


def durable_key(name):
    return KEY_PREFIX + name


class Scheduler:
    def __init__(self, config, store, clock=time.time):
        self.config = config
        self.store = store
        self.entries = {entry["name"]: entry for entry in config.schedules}
        self.next_due = {}
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self):
        """Plan every entry (after the store got its durable state back), then run the thread."""
        if self.entries:
            self.plan()
            for name, entry in self.entries.items():
                logger.info("schedule %r: %s %s, next run %s", name, entry["task"],
                            schedules.describe(entry), time.ctime(self.next_due[name]))
            self._thread.start()

    def plan(self):
        """Each entry's first due time, from its last run if the store remembers one."""
        now = self._clock()
        for name, entry in self.entries.items():
            last = self.store.schedules.durable_value(durable_key(name))
            if last is None or last.get("task") != entry["task"] or \
                    last.get("when") != schedules.describe(entry):
                # Never ran (or the entry changed): the first due time after now.
                self.next_due[name] = schedules.next_due(entry, now)
            else:
                due = schedules.next_due(entry, last["due"])
                if due <= now:  # missed while the server was down: once, right away
                    logger.info("schedule %r missed its run at %s while the server was down: "
                                "running it once now", name, time.ctime(due))
                    due = now
                self.next_due[name] = due
        self._publish()

    def stop(self, timeout=5.0):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the loop -----------------------------------------------------------------------------

    def _run(self):
        while not self._stop.is_set():
            try:
                self.run_due()
            except Exception:
                logger.exception("scheduler tick failed")
                self._stop.wait(1.0)  # an entry that keeps failing must not spin the loop
            wait = min(self.next_due.values()) - self._clock()
            self._stop.wait(min(max(wait, 0.0), MAX_SLEEP))

    def run_due(self):
        """Enqueue every entry whose due time has come; plan its next one."""
        now = self._clock()
        for name, due in list(self.next_due.items()):
            if due > now:
                continue
            entry = self.entries[name]
            self.enqueue(entry, due)
            # From the due time, not from now: no drift. But never in the past: a stall or a
            # long downtime gives one run, not a burst of catch-up runs.
            following = schedules.next_due(entry, due)
            now = self._clock()
            if following <= now:
                following = schedules.next_due(entry, now)
            self.next_due[name] = following
            self._publish()

    def enqueue(self, entry, due):
        """One run of `entry` for its due time `due`; returns the result id (None if refused)."""
        record = new_record(
            id=secrets.token_hex(16), task=entry["task"], args=entry["args"],
            kwargs=entry["kwargs"], priority=entry["priority"] or 0,
            queue=entry["queue_name"] or "default", takes_context=entry["takes_context"],
            backend=self.config.alias, retry=entry.get("retry"))
        record.update(entry.get("workflow") or {})  # type: ignore[typeddict-item]  # resolve.py
        run = {"due": due, "task": entry["task"], "when": schedules.describe(entry)}
        try:
            stored = self.store.schedules.enqueue_scheduled(
                record, durable_key(entry["name"]), run, overlap=entry.get("overlap", True))
            if stored is None:
                logger.info("schedule %r: run due at %s skipped: the previous run is still "
                            "pending or running (overlap: False)", entry["name"], time.ctime(due))
                return None
        except (QueueFull, ServerUnavailable) as exc:
            logger.error("schedule %r: run due at %s skipped: %s", entry["name"],
                         time.ctime(due), exc)
            return None
        finally:
            # With a STATE_DIR: the run and its note reach the journal now, as a client's
            # request would (not only at the supervisor's next tick).
            self.store.commit()
        logger.debug("schedule %r: enqueued %s as %s", entry["name"], entry["task"], record["id"])
        return record["id"]

    def _publish(self):
        self.store.schedules.set_schedules({
            name: {"task": entry["task"], "when": schedules.describe(entry),
                   "next_run": self.next_due.get(name), "key": durable_key(name),
                   "overlap": entry.get("overlap", True)}
            for name, entry in self.entries.items()})
