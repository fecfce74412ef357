"""Worker reload for deploys: fresh interpreters with the code now on disk, the queue kept.

    SIGHUP on tasks_server, or `manage.py tasks_reload` (the `reload` call) -> request()
    supervisor tick -> tick():
      start     generation G+1: spawn WORKERS new workers beside the old ones
      ready     every new worker has connected and asked for work -> generation = G+1, the
                old workers retire: each finishes its running task, then exits (nothing fails)
      grace     an old worker still busy `grace` seconds later is stopped; its task ends
                WorkerLost (the same bound as a shutdown's drain)
      done      no old worker left -> last_reload = {ok: True, ...}
      failed    a new worker dies before it gets ready (broken settings or imports), or none
                is ready within READY_TIMEOUT -> the new ones retire, the old ones keep serving,
                last_reload = {ok: False, error: ...}

Start-new-then-retire-old: at every moment the old workers, the new ones, or both take tasks,
so there are never zero workers able to run one. Pending tasks and results never leave the
store. A reload requested during a reload runs right after it (the code may have changed again).
"""

import logging
import time
from dataclasses import dataclass, field

logger = logging.getLogger("django_tasks_shared.supervisor")

READY_TIMEOUT = 60.0  # seconds for the new workers to get ready before the reload fails


@dataclass
class Reload:
    """The reload in progress."""
    generation: int             # of the workers it starts
    request: int                # the highest request id it serves
    requested_at: float         # time.time()
    started: float              # monotonic
    old: list = field(default_factory=list)  # ids of the workers it replaces
    phase: str = "starting"     # then "retiring"
    retire_deadline: float | None = None


class Reloads:
    def __init__(self, supervisor, grace):
        self.sup = supervisor
        self.grace = grace
        self.generation = 1        # the generation of the workers serving (new ones once ready)
        self.current: Reload | None = None  # the reload in progress
        self.last = None           # the last finished reload, for health
        self.requests = 0          # reload requests received so far
        self._pending = 0          # requests not started yet (the highest request id)

    @property
    def spawn_generation(self):
        """The generation that replacement workers belong to right now."""
        return self.current.generation if self.current else self.generation

    def request(self):
        """Ask for a reload (any thread, a signal handler too); returns its request id."""
        self.requests += 1
        self._pending = self.requests
        return {"request": self.requests, "generation": self.generation,
                "reloading": self.current is not None}

    # ---- driven by the supervisor tick (its lock held) ------------------------------------

    def tick(self, now):
        cur = self.current
        if cur is None:
            if self._pending:
                self._start(now)
            return
        if cur.phase == "starting":
            self._check_ready(cur, now)
        if self.current is cur and cur.phase == "retiring":
            self._check_retired(cur, now)

    def _start(self, now):
        sup = self.sup
        request, self._pending = self._pending, 0
        old = [w.id for w in sup.workers.values()]
        cur = self.current = Reload(generation=self.generation + 1, request=request,
                                    requested_at=time.time(), started=now, old=old)
        logger.info("reload %d: starting %d worker(s) of generation %d beside %d old one(s)",
                    request, sup.config.workers, cur.generation, len(old))
        sup.reset_backoff()
        for pool in sup.pools.values():  # every pool (supervision/pools.py)
            for _ in range(pool.workers):
                sup.spawn(generation=cur.generation, pool=pool)

    def _new_workers(self, cur):
        return [w for w in self.sup.workers.values() if w.generation == cur.generation]

    def _check_ready(self, cur, now):
        sup = self.sup
        new = self._new_workers(cur)
        ready = [w for w in new if (sup.store.worker_info(w.id) or {}).get("ready_at")]
        if len(ready) >= sup.config.workers:
            self.generation = cur.generation
            cur.phase = "retiring"
            cur.retire_deadline = now + self.grace
            for worker_id in cur.old:
                sup.store.retire_worker(worker_id, f"reload to generation {self.generation}")
            logger.info("reload %d: generation %d ready; %d old worker(s) retire after their "
                        "current task (grace %g s)", cur.request, self.generation,
                        len(cur.old), self.grace)
        elif now - cur.started > READY_TIMEOUT:
            self._fail(cur, f"{len(ready)} of {sup.config.workers} new worker(s) ready after "
                            f"{READY_TIMEOUT:g} s")

    def _check_retired(self, cur, now):
        sup = self.sup
        old = [sup.workers[i] for i in cur.old if i in sup.workers]
        if not old:
            self._finish(cur, ok=True)
            return
        if cur.retire_deadline is not None and now >= cur.retire_deadline:
            for worker in old:
                sup.stop_worker(worker, f"was stopped: still busy {self.grace:g} s after a "
                                        f"reload (the --grace of tasks_server)")

    def on_exit(self, worker, info):
        """A worker exited; a new one that died before getting ready fails the reload."""
        cur = self.current
        if cur and cur.phase == "starting" and worker.generation == cur.generation \
                and info.get("ready_at") is None and not info.get("retiring"):
            failure = (info.get("failure") or "").strip().splitlines()
            self._fail(cur, f"new worker {worker.id} (pid {worker.popen.pid}) "
                            f"{failure[-1] if failure else 'exited before it was ready'}")
            return True
        return False

    def _fail(self, cur, error):
        sup = self.sup
        for worker in self._new_workers(cur):
            sup.store.retire_worker(worker.id, "its reload failed")
        # The old generation serves on: its earlier start-up is what counts for health.
        sup.resolve_failure()
        logger.error("reload %d failed: %s; generation %d keeps serving",
                     cur.request, error, self.generation)
        self._finish(cur, ok=False, error=error)

    def _finish(self, cur, ok, error=None):
        self.last = {"request": cur.request, "generation": cur.generation, "ok": ok,
                     "error": error, "requested_at": cur.requested_at,
                     "finished_at": time.time()}
        self.current = None
        if ok:
            logger.info("reload %d done: generation %d serving", cur.request, self.generation)

    def meta(self):
        return {"generation": self.generation, "reloading": self.current is not None,
                "reload_requests": self.requests, "last_reload": self.last}
