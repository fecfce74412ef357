"""The supervisor thread: owns the worker processes and keeps the failure promises.

Every TICK seconds, for each worker it spawned (subprocess.Popen = the only reaper; a
psutil.Process made at spawn = pid + create time, so PID reuse can never fool it):

    Popen.poll() -> exited?  fail its running tasks (WorkerLost, naming pid and signal),
                             respawn; exits before the worker ever got ready count as a crash
                             loop and back off exponentially (reason kept for health)
    psutil       -> cache RSS (with children) and CPU %  ->  store.update_worker (health reads it)
                    RSS over MAX_WORKER_MEMORY            ->  store.retire_worker (nothing fails)
    store.overdue(TIME_LIMIT)                             ->  fail with TimeLimitExceeded,
                                                              SIGTERM, SIGKILL after KILL_GRACE
                    (not within REPORT_GRACE of a stall of this process: the reports of tasks
                    that finished meanwhile come first)
    a stopped worker reaped before its SIGKILL deadline   ->  leftovers.py: what is left of its
                    session (a child ignoring SIGTERM) is SIGKILLed at the deadline
    store.cancels.take_kills() (cancel of a running task; the store wakes this thread at once,
                        not at the next tick)             ->  end_task: SIGTERM, SIGKILL after
                                                              KILL_GRACE, replaced
    store.sample_history()                                ->  rings for the web page (~1/s)
    owner pid (embedded mode) gone                        ->  ask the server to stop
    MAX_TASK_MEMORY: a faster sampler thread of its own (memwatch.py) ends the task with
    MemoryLimitExceeded through end_task and SIGKILLs the worker at once
    reload (reload.py): driven by the tick; spawns and retires through the public methods
    below (spawn, stop_worker, reset_backoff...), as memwatch does (kill, end_task)

Workers are fresh interpreters (`python -c ...worker...`), the equivalent of the `spawn` start
method: no fork() of this multi-threaded process, and Django is set up in each worker.

Each worker belongs to a pool (pools.py; one pool serving every queue without OPTIONS["POOLS"]):
its pool's size is kept, and its pool's TIME_LIMIT, MAX_WORKER_MEMORY and MAX_TASK_MEMORY apply.
"""

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

import psutil

from ..protocol.paths import send_spec, start_python
from ..protocol.starts import STARTS_DIR, StartTable
from ..protocol.status import TASK_CANCELLED, TIME_LIMIT_EXCEEDED, WORKER_LOST
from ..protocol.text import plural
from .leftovers import Leftovers
from .memwatch import MemoryWatcher
from .pools import DEFAULT_POOL, pools_of, register_info
from .reload import Reloads
from .rss import children_of, total_rss

logger = logging.getLogger("django_tasks_shared.supervisor")

TICK = 0.5
QUICK = 0.02                # poll interval while a worker is being stopped (cancel, time limit)
KILL_GRACE = 1.0            # SIGTERM -> SIGKILL for a worker past TIME_LIMIT
CHILDREN_EVERY = 10         # ticks between scans for a worker's own child processes
BACKOFF_MAX = 30.0
# Seconds between two ticks beyond TICK: this process was stalled. Small, because a stall shorter
# than TICK + STALL_GAP goes unseen and its held reports then race the TIME_LIMIT check (a 2.3 s
# stall went unseen at 2.0 and tasks that had finished within their limit were judged overdue);
# a false alarm under load only delays TIME_LIMIT by REPORT_GRACE.
STALL_GAP = 0.5
REPORT_GRACE = 2.0          # seconds after a stall before TIME_LIMIT is enforced again
# Kept across releases: a server of the previous release runs it after `tasks_reload` installs
# this one (tests/test_mixed_versions.py).
WORKER_CMD = "from django_tasks_shared.worker import main; main()"


def describe_exit(returncode):
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


@dataclass
class Worker:
    id: str
    popen: subprocess.Popen
    proc: psutil.Process
    spawned_at: float
    generation: int = 1                 # bumped by each reload (see reload.py)
    children: list = field(default_factory=list)
    kill_at: float | None = None        # SIGKILL deadline after a SIGTERM
    kill_reason: str | None = None
    pool: str = DEFAULT_POOL            # its pool's name (pools.py)


class Supervisor:
    def __init__(self, config, store, *, owner_pid=None, on_owner_lost=None, grace=30.0):
        self.config = config
        self.store = store
        self.owner_pid = owner_pid
        self.on_owner_lost = on_owner_lost
        self.owner_lost = False
        self.workers = {}
        self.crash_streak = 0
        self.next_spawn_at = 0.0
        self.last_failure = None
        self.memory_warning = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        # Held by the tick, the shutdown, the memory watcher and a reload's steps: whoever holds
        # it may start, signal and forget workers.
        self.lock = threading.Lock()
        self._ticks = 0
        self.pools = {pool.name: pool for pool in pools_of(config)}
        self.memory_watcher = (MemoryWatcher(self, self.task_memory_limit)
                               if any(p.max_task_memory for p in self.pools.values()) else None)
        self._wake = threading.Event()  # set by the store when a running task is cancelled
        store.cancels.on_kill = self._wake.set
        self.reloads = Reloads(self, grace)
        self.leftovers = Leftovers()
        self._last_tick = None
        self._resumed_at = float("-inf")  # monotonic end of the last stall seen

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self):
        with self.lock:
            for pool in self.pools.values():
                for _ in range(pool.workers):
                    self.spawn(pool=pool)
        self._publish()
        self._thread.start()
        if self.memory_watcher is not None:
            self.memory_watcher.start()

    def shutdown(self, grace, urgent=None):
        """Stop handing out tasks, give running ones `grace` seconds, then stop every worker."""
        self._stopping = True
        self.store.drain()
        deadline = time.monotonic() + grace
        while self.store.running_count() and time.monotonic() < deadline:
            if urgent is not None and urgent.is_set():
                break
            with self.lock:
                self._reap()
                self._enforce_time_limit()  # TIME_LIMIT holds during the grace period too
            time.sleep(0.05)
        with self.lock:
            for worker in self.workers.values():
                self.kill(worker, signal.SIGTERM)
            stop_by = time.monotonic() + 2.0
            for worker in list(self.workers.values()):
                try:  # Popen stays the only reaper: psutil.wait_procs would steal exit codes
                    worker.popen.wait(timeout=max(0.0, stop_by - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.kill(worker, signal.SIGKILL)
                    try:
                        worker.popen.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        logger.error("worker %s (pid %d) did not exit", worker.id,
                                     worker.popen.pid)
                self._forget(worker, "the task server stopped before the task finished "
                                     f"(shutdown grace {grace:g} s)")
                # Its task's children that ignored the SIGTERM must not outlive the server.
                self.leftovers.adopt(worker.id, worker.popen.pid, time.monotonic())
            self.store.commit()  # the workers' ends journaled: their start tables go
            if self.config.state_dir is not None:  # STATE_DIR/starts, empty now
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(self.config.state_dir, STARTS_DIR))
        if self.memory_watcher is not None:  # it held the cap during the grace period too
            self.memory_watcher.stop()

    # ---- the tick -------------------------------------------------------------------------------

    def _run(self):
        next_tick = time.monotonic()
        while not self._stopping:
            killing = False
            try:
                with self.lock:
                    if not self._stopping:
                        if time.monotonic() >= next_tick:
                            next_tick = time.monotonic() + TICK
                            self._tick()
                        else:  # woken by a cancel, or a worker is being stopped
                            self._quick()
                        killing = bool(self.leftovers.pending) or \
                            any(w.kill_at is not None for w in self.workers.values())
            except Exception:
                logger.exception("supervisor tick failed")
            wait = next_tick - time.monotonic()
            if killing:
                wait = min(wait, QUICK)  # reap and replace it as soon as it is gone
            if self._wake.wait(max(0.0, wait)):
                self._wake.clear()

    def _quick(self):
        """Between ticks: stop the workers of cancelled tasks, reap, replace. No psutil."""
        self._stop_cancelled()
        self._reap()
        self.leftovers.kill_due()
        self._respawn()
        self.store.commit()  # the siblings' WorkerLost: on disk like any change

    def _respawn(self):
        now = time.monotonic()
        generation = self.reloads.spawn_generation
        for pool in self.pools.values():
            while sum(w.generation == generation and w.pool == pool.name
                      for w in self.workers.values()) < pool.workers and now >= self.next_spawn_at:
                self.spawn(replacement=True, generation=generation, pool=pool)

    def _tick(self):
        self._ticks += 1
        now = time.monotonic()
        if self._last_tick is not None and now - self._last_tick > TICK + STALL_GAP:
            # This process was stopped (SIGSTOP, a VM pause, swapping): workers whose tasks
            # finished meanwhile are resending their reports right now.
            logger.warning("the task server did not run for %.1f s (stalled); TIME_LIMIT "
                           "waits %.0f s for the reports of tasks that finished meanwhile",
                           now - self._last_tick, REPORT_GRACE)
            self._resumed_at = now
        self._last_tick = now
        if self.owner_pid is not None and os.getppid() != self.owner_pid:
            logger.warning("owner process %d is gone: stopping the embedded server",
                           self.owner_pid)
            self.owner_lost = True
            self._stopping = True
            if self.on_owner_lost:
                self.on_owner_lost()
            return
        self._reap()
        self._enforce_time_limit()
        self.leftovers.kill_due()
        self._sample()
        self.reloads.tick(time.monotonic())
        self._respawn()
        self.store.sweep()
        self.store.sample_history()
        self._publish()
        self.store.commit()  # WorkerLost, time limits, expiries: on disk like any change

    def _reap(self):
        for worker in list(self.workers.values()):
            if worker.popen.poll() is not None:
                self._on_exit(worker)

    def _on_exit(self, worker):
        if worker.kill_at is not None:  # we stopped it: its task's children go too
            # (inf: the SIGKILL went out already, so whatever is left is killed at once)
            now = time.monotonic()
            self.leftovers.adopt(worker.id, worker.popen.pid,
                                 worker.kill_at if worker.kill_at != float("inf") else now, now)
        info = self.store.worker_info(worker.id) or {}
        how = describe_exit(worker.popen.returncode)
        reason = worker.kill_reason or how
        failed = self._forget(worker, f"worker {worker.id} (pid {worker.popen.pid}) {reason}")
        if failed:
            logger.error("worker %s (pid %d) %s; %s failed with WorkerLost",
                         worker.id, worker.popen.pid, reason, plural(len(failed), "task"))
        if self.reloads.on_exit(worker, info):
            return
        if info.get("retiring") and worker.popen.returncode == 0:
            logger.info("worker %s (pid %d) retired: %s", worker.id, worker.popen.pid,
                        info.get("retire_reason"))
            return
        if info.get("ready_at") is None and not self._stopping and worker.kill_reason is None:
            # Died before it could take a task: broken settings, import error... back off.
            self.crash_streak += 1
            delay = min(0.5 * 2 ** (self.crash_streak - 1), BACKOFF_MAX)
            self.next_spawn_at = time.monotonic() + delay
            failure = (info.get("failure") or "").strip().splitlines()
            self.last_failure = {
                "worker": worker.id, "pid": worker.popen.pid, "exit": how,
                "reason": failure[-1] if failure else how, "detail": info.get("failure"),
                "at": time.time(), "retry_in": delay, "streak": self.crash_streak}
            logger.error("worker %s (pid %d) failed to start (%s): %s; retrying in %.1f s",
                         worker.id, worker.popen.pid, how, self.last_failure["reason"], delay)

    def _forget(self, worker, message):
        self.workers.pop(worker.id, None)
        _, failed = self.store.worker_exited(
            worker.id, WORKER_LOST, f"{WORKER_LOST}: {message}\n")
        return failed

    def _stop_cancelled(self):
        for worker_id, task_id, text in self.store.cancels.take_kills():
            logger.warning(text.strip())
            self.end_task(worker_id, task_id, TASK_CANCELLED, text,
                          f"was stopped: task {task_id} it ran was cancelled")

    def _enforce_time_limit(self):
        self._stop_cancelled()  # here so that it also runs during the shutdown grace period
        now = time.monotonic()
        limits = [p.time_limit for p in self.pools.values() if p.time_limit is not None]
        # After a stall of the server itself, reports of tasks that finished meanwhile arrive
        # first (REPORT_GRACE).
        if limits and now >= self._resumed_at + REPORT_GRACE:
            for worker_id, task_id, ran in self.store.overdue(min(limits)):
                worker = self.workers.get(worker_id)
                limit = self._pool_of(worker).time_limit
                if limit is None or ran <= limit:
                    continue  # another pool's (shorter) limit
                text = (f"{TIME_LIMIT_EXCEEDED}: task {task_id} ran {ran:.1f} s, over "
                        f"TIME_LIMIT={limit:g} s; worker {worker_id} (pid "
                        f"{worker.popen.pid if worker else '?'}) was killed\n")
                self.end_task(worker_id, task_id, TIME_LIMIT_EXCEEDED, text,
                              f"was killed: a task it ran exceeded TIME_LIMIT={limit:g} s",
                              over=limit)
        for worker in self.workers.values():
            if worker.kill_at is not None and now >= worker.kill_at:
                self.kill(worker, signal.SIGKILL)
                worker.kill_at = float("inf")

    def end_task(self, worker_id, task_id, exception_path, text, kill_reason, over=None):
        """End a RUNNING task FAILED with `exception_path` and stop its worker (lock held).

        The worker's process group gets SIGTERM (pid + create time checked), SIGKILL after
        KILL_GRACE; when it exits, its sibling tasks end WorkerLost and it is replaced. Used by
        TIME_LIMIT; any other reason to stop a task mid-run goes through here too. With `over`
        (TIME_LIMIT), nothing is done unless the task still runs on that worker past `over`
        seconds: its report may have come since the store was asked (after a stall, it does),
        and the worker, running its next task, must not be stopped."""
        if self.store.fail_task(task_id, exception_path, text,
                                worker_id=worker_id if over is not None else None, over=over):
            logger.error(text.strip())
        elif over is not None:
            return
        worker = self.workers.get(worker_id)
        if worker is not None:
            self.stop_worker(worker, kill_reason)

    def stop_worker(self, worker, reason):
        """SIGTERM to the worker's process group now, SIGKILL after KILL_GRACE (lock held);
        `reason` ends the WorkerLost text of whatever it still runs when it exits."""
        if worker.kill_at is None:
            worker.kill_reason = reason
            self.kill(worker, signal.SIGTERM)
            worker.kill_at = time.monotonic() + KILL_GRACE

    def _sample(self):
        scan_children = self._ticks % CHILDREN_EVERY == 1
        for worker in self.workers.values():
            limit = self._pool_of(worker).max_worker_memory
            if scan_children:
                worker.children = children_of(worker.proc) or []
            try:
                cpu = worker.proc.cpu_percent(None)
            except psutil.Error:
                continue  # exited between poll() and now: the next tick reaps it
            rss = total_rss(worker.proc, worker.children)
            if rss is None:
                continue
            self.store.update_worker(worker.id, rss_bytes=rss, cpu_percent=round(cpu, 1))
            if limit is not None and rss > limit * 1024 * 1024:
                info = self.store.worker_info(worker.id) or {}
                if not info.get("claimed"):
                    # Over the limit before running anything: recycling cannot help and would
                    # respawn in a loop. Keep it, and say so in health.
                    self.memory_warning = (
                        f"MAX_WORKER_MEMORY={limit} MiB is below the RSS of a fresh worker "
                        f"({rss / 2**20:.0f} MiB): raise it")
                    continue
                self.store.retire_worker(
                    worker.id, f"RSS {rss / 2**20:.0f} MiB over MAX_WORKER_MEMORY={limit} MiB")

    def _publish(self):
        if self.crash_streak and self.workers:
            for worker_id in self.workers:
                info = self.store.worker_info(worker_id)
                # Only a worker that got ready AFTER the last failure proves start-up works again:
                # one that was already running before the break must not reset the back-off.
                if info and info.get("ready_at") is not None and \
                        info["ready_at"] > (self.last_failure or {}).get("at", 0):
                    self.crash_streak = 0
                    self.last_failure = dict(self.last_failure or {}, resolved=True)
                    break
        self.store.set_meta(
            **self.reloads.meta(),
            supervisor={
                "workers_expected": self.config.workers,
                "workers_alive": len(self.workers),
                "pools": [pool.view(sum(w.pool == pool.name for w in self.workers.values()))
                          for pool in self.pools.values()],
                "crash_loop": bool(self.crash_streak),
                "next_spawn_in": round(max(0.0, self.next_spawn_at - time.monotonic()), 2)
                if self.crash_streak else None,
                "last_failure": self.last_failure,
                "memory_warning": self.memory_warning,
            })

    # ---- for reload.py and memwatch.py (lock held) ----------------------------------------------

    def reset_backoff(self):
        """Start-up failures counted so far no longer delay a spawn (a reload starts afresh)."""
        self.crash_streak = 0
        self.next_spawn_at = 0.0

    def resolve_failure(self):
        """The last start-up failure is over: health shows it resolved, not as a crash loop."""
        self.crash_streak = 0
        if self.last_failure:
            self.last_failure = dict(self.last_failure, resolved=True)

    def warn_memory(self, text):
        """A memory limit cannot work as configured (health says so until the restart)."""
        self.memory_warning = text

    # ---- processes ------------------------------------------------------------------------------

    def request_reload(self):
        """A deploy: replace every worker with a fresh one (reload.py). Thread-safe."""
        if self._stopping:
            raise RuntimeError("the task server is stopping: no reload")
        return self.reloads.request()

    def _pool_of(self, worker):
        """The pool of a worker (the first pool for one already forgotten)."""
        pool = self.pools.get(worker.pool) if worker is not None else None
        return pool or next(iter(self.pools.values()))

    def task_memory_limit(self, worker):
        """MAX_TASK_MEMORY (MiB) of the worker's pool, or None (memwatch.py)."""
        return self._pool_of(worker).max_task_memory

    def spawn(self, replacement=False, generation=None, pool=None):
        config = self.config
        pool = pool or next(iter(self.pools.values()))
        worker_id = f"{config.alias}-{secrets.token_hex(4)}"
        env = {"DJANGO_SETTINGS_MODULE": config.settings_module} if config.settings_module \
            else None
        table = self._start_table(worker_id, pool)
        try:
            popen = start_python(WORKER_CMD, env=env,
                                 pass_fds=() if table is None else (table.fd,))
        except BaseException:
            if table is not None:
                self.store.reservations.closing.append(table)
            raise
        proc = psutil.Process(popen.pid)
        generation = generation or self.reloads.spawn_generation
        self.store.register_worker(worker_id, popen.pid, table=table, generation=generation,
                                   **register_info(pool))
        spec = {"address": config.address if isinstance(config.address, str)
                else list(config.address), "authkey": config.authkey.hex(),
                "worker_id": worker_id, "alias": config.alias, "kind": config.kind,
                "threads": pool.threads,
                "server_pid": os.getpid(), "timeout": config.connect_timeout,
                "max_payload": config.max_payload}
        if table is not None:  # prefetch (worker/prefetch.py); an older worker ignores it
            spec["starts"] = {"fd": table.fd}
        send_spec(popen, spec)  # False when it died at once: the next tick reaps it
        self.workers[worker_id] = Worker(worker_id, popen, proc, time.monotonic(), generation,
                                         pool=pool.name)
        if replacement:
            self.store.count("worker_restarts")
        return worker_id

    def _start_table(self, worker_id, pool):
        """The worker's start table (protocol/starts.py), or None without prefetch. With a
        STATE_DIR it is a file there, so that a restart after a crash can read it."""
        capacity = self.config.effective_prefetch
        if capacity <= 1:
            return None
        path = None
        if self.config.state_dir is not None:
            folder = os.path.join(self.config.state_dir, STARTS_DIR)
            os.makedirs(folder, mode=0o700, exist_ok=True)
            path = os.path.join(folder, worker_id)
        try:
            return StartTable.create(pool.threads, capacity, path)
        except OSError as exc:  # a full STATE_DIR: this worker claims one task at a time
            logger.warning("worker %s: no start table (%s); it runs without prefetch",
                           worker_id, exc)
            return None

    def kill(self, worker, sig):
        """Signal the worker's process group (its own session: the task's children too).
        Safe against PID reuse: we are its only reaper and it is not reaped yet."""
        # pid AND create time (psutil's is_running), on top of the unreaped-child guarantee.
        if worker.popen.poll() is None and worker.proc.is_running():
            try:
                os.killpg(worker.popen.pid, sig)
            except ProcessLookupError:
                pass
