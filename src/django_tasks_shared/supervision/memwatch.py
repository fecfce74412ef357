"""MAX_TASK_MEMORY: a small thread in the server that samples the workers' RSS fast.

The supervisor's tick (0.5 s) is too slow for a hard cap: a task allocating 500 MiB/s passes a
200 MiB cap by 250 MiB between two ticks. With MAX_TASK_MEMORY set, the supervisor starts this
thread:

    every INTERVAL: for each worker (a snapshot of Supervisor.workers; no lock taken)
        RSS = the worker's + its children's (psutil memory_info: one read of /proc/<pid>/statm
              each, ~30 us here; the children of BUSY workers are rescanned every CHILD_SCAN
              seconds: a scan walks all of /proc, ~4 ms here with 100 processes)
        over the cap (its pool's MAX_TASK_MEMORY; a pool without one is not sampled)
             -> supervisor lock -> store.worker_info: does it run a task?
            yes: Supervisor.end_task(its longest-running task, MemoryLimitExceeded naming the RSS
                 and the limit), then SIGKILL to its process group at once (memory is the
                 emergency: no SIGTERM grace); the tick reaps it: siblings WorkerLost, respawn
            no:  retire it (it is over the cap between tasks: the next task would die at once),
                 or, for a fresh worker, a warning in health (the cap is below a fresh worker)

It is sampled, not enforced by the kernel: a task gets past the cap by what it allocates in one
INTERVAL plus the kill latency (docs/memory.md has the figures; a cgroup limit is exact).
"""

import logging
import signal
import threading
import time

from ..protocol.status import MEMORY_LIMIT_EXCEEDED
from .rss import children_of, total_rss

logger = logging.getLogger("django_tasks_shared.supervisor")

INTERVAL = 0.05     # seconds between samples of every worker
CHILD_SCAN = 1.0    # seconds between scans for the workers' child processes
MiB = 1024 * 1024


class MemoryWatcher:
    def __init__(self, supervisor, limit_for):
        self.supervisor = supervisor
        self.limit_for = limit_for  # worker -> MiB or None: its pool's MAX_TASK_MEMORY
        self.children = {}          # worker id -> [psutil.Process] of its descendants
        self.scanned_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-watcher", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self):
        while not self._stop.wait(INTERVAL):
            try:
                self.sample()
            except Exception:
                logger.exception("memory watcher pass failed")

    def rss(self, worker, scan):
        """RSS of the worker and its descendants in bytes, or None if it is gone."""
        if scan:
            busy = (self.supervisor.store.worker_info(worker.id) or {}).get("current")
            children = children_of(worker.proc) if busy else []
            if children is None:
                return None
            self.children[worker.id] = children
        return total_rss(worker.proc, self.children.get(worker.id, ()))

    def sample(self):
        now = time.monotonic()
        scan = now - self.scanned_at >= CHILD_SCAN
        if scan:
            self.scanned_at = now
        workers = list(self.supervisor.workers.values())  # one C-level copy: no lock needed
        for worker in workers:
            limit_mib = self.limit_for(worker)
            if worker.kill_at is not None or limit_mib is None:
                continue  # already being stopped, or its pool has no cap
            rss = self.rss(worker, scan)
            if rss is not None and rss > limit_mib * MiB:
                self._over(worker, rss, time.monotonic(), limit_mib)
        if scan:
            live = {w.id for w in workers}
            for worker_id in list(self.children):
                if worker_id not in live:
                    del self.children[worker_id]

    def _over(self, worker, rss, sampled_at, limit_mib):
        sup = self.supervisor
        seen = f"{rss / MiB:.1f} MiB"  # 200.3 over a cap of 200 must not read "200"
        with sup.lock:
            if sup.workers.get(worker.id) is not worker or worker.kill_at is not None:
                return  # reaped or already stopped meanwhile
            info = sup.store.worker_info(worker.id) or {}
            current = info.get("current") or {}
            if not current:
                if info.get("claimed"):
                    sup.store.retire_worker(worker.id, f"RSS {seen} over MAX_TASK_MEMORY="
                                                       f"{limit_mib} MiB between tasks")
                else:
                    sup.warn_memory(
                        f"MAX_TASK_MEMORY={limit_mib} MiB is below the RSS of a fresh "
                        f"worker ({seen}): every task would be killed; raise it")
                return
            task_id = min(current, key=lambda t: current[t])  # RSS is per process: blame the oldest
            text = (f"{MEMORY_LIMIT_EXCEEDED}: worker {worker.id} (pid {worker.popen.pid}) "
                    f"running task {task_id} reached an RSS of {seen} (with its children), "
                    f"over MAX_TASK_MEMORY={limit_mib} MiB; the worker was killed\n")
            sup.kill(worker, signal.SIGKILL)  # first: every millisecond is more memory
            logger.warning("worker %s (pid %d) SIGKILLed %.1f ms after its RSS sample of %s",
                           worker.id, worker.popen.pid, (time.monotonic() - sampled_at) * 1000,
                           seen)
            sup.end_task(worker.id, task_id, MEMORY_LIMIT_EXCEEDED, text,
                         f"was killed: RSS {seen} over MAX_TASK_MEMORY={limit_mib} MiB")
            worker.kill_at = float("inf")  # end_task's SIGKILL deadline: already done
            sup.store.commit()  # with STATE_DIR: the FAILED record on disk now, not next tick
