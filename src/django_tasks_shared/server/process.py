"""The server process: one TaskStore, served by an event loop that speaks the wire protocol of
`multiprocessing.managers` (a stock manager proxy can call it), with the supervisor beside it.

    clients (web, shells, workers) ──unix socket / TCP──> event loop thread (eventloop.py):
                                                          every connection, one poller
                                                          └─ TaskStore method (pinned "store");
                                                             wait / claims parked, not blocking
                                                          └─ store.commit() once per turn:
                                                             journal written (STATE_DIR) before
                                                             the replies
    Supervisor thread ── psutil ──> worker processes (supervision/; a reload on SIGHUP)
    STATE_DIR: restored before the socket exists, final snapshot after the drain (durable/)
    Scheduler thread ── enqueue_scheduled ──> OPTIONS["SCHEDULE"] runs (schedules/scheduler.py)

Started three ways, all through `serve()`:
- `manage.py tasks_server` (foreground, systemd, Docker);
- embedded: a fresh interpreter running `main()` (client/launcher.py), launched by the first
  process that uses a backend with no ADDRESS; it exits when that owner dies;
- AUTOSTART: the same, detached, for a configured ADDRESS.
The spec (Config.to_spec() plus launch fields) arrives as JSON on stdin, so the authkey is never
on a command line or in the environment.
"""

import contextlib
import fcntl
import json
import logging
import os
import resource
import signal
import sys
import threading
import time

from .. import __version__
from ..durable.statedir import StateDir, StateDirInUse, StateError
from ..protocol.config import Config
from ..protocol.paths import UnsafePath, make_socket_dir, side_file
from ..protocol.text import plural
from ..schedules.scheduler import Scheduler
from ..store import TaskStore
from ..supervision.supervisor import Supervisor
from .eventloop import EventLoop, listen

logger = logging.getLogger("django_tasks_shared.server")

SHUTDOWN_LINGER = 0.2  # seconds for in-flight replies after the last task ended
MESSAGE_HEADROOM = 1 << 20  # a request may carry MAX_PAYLOAD of data plus this much else
LOOP_STOP_TIMEOUT = 5.0  # seconds for the event loop to write its last replies and close


class AlreadyRunning(RuntimeError):
    pass


def lock_path(address):
    return side_file(address, ".lock")


def _take_lifetime_lock(address):
    """Held while the server lives: whoever gets it knows any socket file there is stale."""
    fd = os.open(lock_path(address), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(f"another task server holds {lock_path(address)}") from None
    return fd


def _raise_fd_limit():
    # The accepter spins at 100 % CPU when accept() fails for want of file descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def serve(config, *, owner_pid=None, grace=30.0, ready=None, install_signals=True,
          discard_state=False):
    """Serve until SIGTERM/SIGINT (or the owner's death); drain, stop workers, clean up.
    SIGHUP reloads the workers. With config.state_dir: restore first, snapshot at the end."""
    address = config.address
    if isinstance(address, str):
        make_socket_dir(address)  # UnsafePath: a file in the way, no permission
    lock_fd = _take_lifetime_lock(address)
    state = None
    try:
        if isinstance(address, str) and os.path.exists(address):
            os.unlink(address)  # stale: its server is gone, or we would not hold the lock
        _raise_fd_limit()
        store = _make_store(config)
        if config.state_dir is not None:
            # Before the socket exists: no client sees the store until it is restored.
            state = _open_state(config, store, discard_state)
        listener = listen(address)  # the socket file is 0600 whatever the umask
        loop = EventLoop(
            store, listener, config.authkey,
            message_limit=None if config.max_payload is None
            else config.max_payload + MESSAGE_HEADROOM,
            max_connections=config.max_connections, handshake_timeout=config.connect_timeout)
        stop, urgent = threading.Event(), threading.Event()
        supervisor = Supervisor(config, store, owner_pid=owner_pid, on_owner_lost=stop.set,
                                grace=grace)
        store.on_reload = supervisor.request_reload
        if install_signals:
            _install_signals(stop, urgent, supervisor)
        supervisor.start()
        scheduler = Scheduler(config, store)  # after any restored state: it reads last runs
        scheduler.start()
        # Serve last: the first client to get in sees workers and schedules planned (earlier
        # connections wait in the listen backlog, well within their CONNECT_TIMEOUT).
        threading.Thread(target=_run_loop, args=(loop, stop), name="event-loop",
                         daemon=True).start()
        logger.info("task server %s listening on %s (%s x %s each)", __version__,
                    config.address_text, plural(config.workers, "worker"),
                    plural(config.threads, "thread"))
        if ready is not None:
            ready()
        while not stop.wait(0.5):
            pass
        scheduler.stop()
        _drain(supervisor, loop, grace, urgent)
        if state is None:
            _log_losses(store)
        if isinstance(address, str):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)
        if state is not None:
            state.close()  # the final snapshot (nothing changes the store any more)
            state = None
        logger.info("task server stopped")
    finally:
        if state is not None:  # failed before serving: release the directory, write nothing
            state.release()
        os.close(lock_fd)


def _make_store(config):
    store = TaskStore(
        max_results=config.max_results, result_ttl=config.result_ttl,
        max_queue=config.max_queue, max_tasks_per_worker=config.max_tasks_per_worker)
    store.set_meta(
        address=config.address_text, version=__version__, alias=config.alias,
        kind=config.kind, python=sys.version.split()[0], embedded=config.embedded,
        workers_expected=config.workers, threads=config.threads,
        time_limit=config.time_limit, max_worker_memory=config.max_worker_memory,
        max_task_memory=config.max_task_memory, retry=config.retry,
        queues=list(config.queues), max_payload=config.max_payload,
        max_connections=config.max_connections, connections=0)
    return store


def _open_state(config, store, discard_state):
    """Lock STATE_DIR and restore it into `store` (or move it aside first, when asked)."""
    state = StateDir(config.state_dir, config.fsync, config.journal_limit)
    state.lock()
    try:
        if discard_state:
            state.discard()
        state.open(store, {"pid": os.getpid(), "version": __version__,
                           "address": config.address_text})
    except BaseException:
        state.release()
        raise
    store.state_health = state.health
    return state


def _install_signals(stop, urgent, supervisor):
    def request_stop(signum, frame):
        if stop.is_set():
            urgent.set()  # second signal: skip the grace period
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, lambda signum, frame: _reload_on_signal(supervisor))


def _drain(supervisor, loop, grace, urgent):
    """No new task; running ones get `grace` seconds (none when the owner died); workers
    stopped; the loop's last replies written."""
    owner_gone = supervisor.owner_lost
    logger.info("task server stopping: draining (grace %.1f s)", 0 if owner_gone else grace)
    supervisor.shutdown(grace=0 if owner_gone else grace, urgent=urgent)
    # Clients parked in wait() were just woken with their tasks' final records (FAILED,
    # WorkerLost, for those cut off): let the loop reply before it stops. A client that
    # connects after this is refused (no socket), never answered wrongly.
    time.sleep(SHUTDOWN_LINGER)
    loop.stop()
    loop.stopped.wait(LOOP_STOP_TIMEOUT)


def _log_losses(store):
    """Without STATE_DIR the queue and the results die with the server: say what is lost."""
    lost = store.lost_at_stop()
    if any(lost.values()):
        parts = [plural(n, what) for what, n in lost.items()
                 if n or what in ("pending task", "result")]
        logger.warning("%s are lost: no STATE_DIR (OPTIONS['STATE_DIR'] keeps them across "
                       "restarts)", " and ".join([", ".join(parts[:-1]), parts[-1]]))


def _run_loop(loop, stop):
    try:
        loop.run()
    except BaseException:
        # No client can be served any more: stop (drain, snapshot) rather than look alive.
        logger.exception("the event loop failed; the task server stops")
        stop.set()


def _reload_on_signal(supervisor):
    try:
        supervisor.request_reload()
    except RuntimeError as exc:  # stopping: a signal handler must not raise into serve()
        logger.warning("SIGHUP ignored: %s", exc)


def main():
    """Entry point of a launched server: the spec arrives as one JSON object on stdin."""
    spec = json.loads(sys.stdin.readline())
    sys.stdin.close()
    logging.basicConfig(level=logging.INFO, format="[tasks-server %(process)d] %(message)s")
    config = Config.from_spec(spec["config"])
    try:
        serve(config, owner_pid=spec.get("owner_pid"), grace=spec.get("grace", 30.0))
    except AlreadyRunning as exc:
        logger.info("not starting: %s", exc)
        sys.exit(0)
    except (StateError, StateDirInUse, UnsafePath) as exc:
        logger.error("refusing to start: %s", exc)
        sys.exit(1)

