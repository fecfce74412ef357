"""The server process: one TaskStore served over a `multiprocessing.managers` BaseManager.

    clients (web, shells, workers) ──unix socket / TCP──> accepter thread
                                                          └─ one thread per connection
                                                             └─ TaskStore method (pinned "store")
                                                             └─ store.commit(): journal written
                                                                (STATE_DIR) before the reply
    Supervisor thread ── psutil ──> worker processes (see supervisor.py; reload.py on SIGHUP)
    STATE_DIR: restored before the socket exists, final snapshot after the drain (statedir.py)
    Scheduler thread ── store.enqueue_scheduled ──> OPTIONS["SCHEDULE"] runs (see scheduler.py)

Started three ways, all through `serve()`:
- `manage.py tasks_server` (foreground, systemd, Docker);
- embedded: a fresh interpreter running `server.main()` (see launcher.py), launched by the first
  process that uses a backend with no ADDRESS; it exits when that owner dies;
- AUTOSTART: the same, detached, for a configured ADDRESS.
The spec (Config.to_spec() plus launch fields) arrives as JSON on stdin, so the authkey is never
on a command line or in the environment.
"""

import fcntl
import functools
import json
import logging
import os
import pickle
import resource
import signal
import sys
import threading
import time
import traceback
from multiprocessing import managers, process

from . import __version__
from .client import REFUSED, STORE_IDENT, set_socket_timeout
from .config import Config, side_file
from .exceptions import ServerUnavailable
from .scheduler import Scheduler
from .statedir import StateDir, StateDirInUse, StateError
from .store import TaskStore
from .supervisor import Supervisor
from .wire import MessageTooLarge, read_message, write_message

logger = logging.getLogger("django_tasks_shared.server")

# The TaskStore methods clients may call; supervisor methods stay private to this process.
EXPOSED = ("enqueue", "get", "get_many", "wait", "finish_and_claim", "worker_failed", "ping",
           "health", "reload", "save_metadata", "metadata", "cancel", "results", "overview")

SHUTDOWN_LINGER = 0.2  # seconds for in-flight replies after the last task ended
MESSAGE_HEADROOM = 1 << 20  # a request may carry MAX_PAYLOAD of data plus this much else

_store = None


def _the_store():
    return _store


class StoreServer(managers.Server):
    """The stock Server with a leaner per-connection loop (same wire protocol).

    Each request is read with usually one system call and plain pickle (see wire.py), and the
    reply written with one. Methods that raise answer ('#ERROR', exc), re-raised by the client
    with its type; anything else wrong answers ('#TRACEBACK', text). Methods that return new
    proxies (method_to_typeid) are not supported: nothing registered here uses them.
    """

    message_limit = None  # bytes: MAX_PAYLOAD plus room for the rest of a record
    max_connections = None  # MAX_CONNECTIONS: beyond it, a new connection is refused
    handshake_timeout = 5.0  # CONNECT_TIMEOUT: a connection must authenticate within it

    def accepter(self):
        """The stock accept loop, plus MAX_CONNECTIONS (refused with a reason the client
        shows) and no busy spin when accept() fails (no file descriptor left)."""
        self.connections = 0
        self._count_lock = threading.Lock()
        while True:
            try:
                conn = self.listener.accept()
            except OSError:
                time.sleep(0.01)
                continue
            with self._count_lock:
                refuse = self.max_connections is not None and \
                    self.connections >= self.max_connections
                if not refuse:
                    self.connections += 1
            if refuse:
                _refuse(conn, f"{REFUSED} the task server holds MAX_CONNECTIONS="
                              f"{self.max_connections} connections")
                self._log_refusal()
                continue
            threading.Thread(target=self.handle_request, args=(conn,), daemon=True).start()

    _refused = 0
    _refusal_logged = 0.0

    def _log_refusal(self):
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= 10:  # a storm must not flood the log
            logger.warning("refused %d connection(s): MAX_CONNECTIONS=%d reached",
                           self._refused, self.max_connections)
            self._refused, self._refusal_logged = 0, now

    def handle_request(self, conn):
        """The stock handler with a deadline on the handshake: a client that connects and
        never authenticates is dropped after CONNECT_TIMEOUT instead of holding a thread."""
        try:
            set_socket_timeout(conn.fileno(), self.handshake_timeout)
            super().handle_request(conn)
        finally:
            with self._count_lock:
                self.connections -= 1

    def serve_client(self, conn):
        fd = conn.fileno()
        set_socket_timeout(fd, 0)  # authenticated: an idle client may wait as long as it likes
        id_to_obj, fallbacks, stop = self.id_to_obj, self.fallback_mapping, self.stop_event
        limit, commit = self.message_limit, _store.commit
        while not stop.is_set():
            try:
                ident, methodname, args, kwds = read_message(fd, limit)
            except MessageTooLarge as exc:
                logger.warning("dropped a client connection: %s (MAX_PAYLOAD)", exc)
                sys.exit(0)
            except (EOFError, OSError):
                sys.exit(0)  # client gone; handle_request() closes the connection
            try:
                obj, exposed, _ = id_to_obj[ident]
                if methodname in exposed:
                    function = getattr(obj, methodname)
                elif methodname in fallbacks:
                    function = functools.partial(fallbacks[methodname], self, conn, ident, obj)
                else:
                    raise AttributeError(f"method {methodname!r} of {type(obj)} is not exposed")
            except Exception:
                msg = ("#TRACEBACK", traceback.format_exc())
            else:
                try:
                    msg = ("#RETURN", function(*args, **kwds))
                except Exception as exc:
                    msg = ("#ERROR", exc)
            try:
                commit()  # with a STATE_DIR: what the reply tells is in the journal first
            except OSError as exc:
                logger.error("journal write failed: %s", exc)
                msg = ("#ERROR", ServerUnavailable(
                    f"the task server could not write its journal ({exc}); the change may not "
                    f"survive a crash. Check the disk of STATE_DIR."))
            try:
                write_message(fd, msg)
            except (pickle.PicklingError, TypeError, AttributeError):
                write_message(fd, ("#UNSERIALIZABLE", traceback.format_exc()))
            except OSError:
                sys.exit(0)
        # Stopping: drop the connection without a word. Returning would let the stock
        # accept_connection() answer ('#RETURN', None), which a client that connected during
        # the final snapshot reads as the reply to its first call (get -> "does not exist").
        sys.exit(0)


def _refuse(conn, reason):
    """Answer where the client expects the challenge, so it can say why; never block on it."""
    try:
        os.set_blocking(conn.fileno(), False)
        conn.send_bytes(reason.encode())
    except OSError:
        pass
    finally:
        conn.close()


class StoreManager(managers.BaseManager):
    """`StoreManager(address, authkey).connect(); m.store()` also works, with stock proxies."""

    _Server = StoreServer


StoreManager.register("store", callable=_the_store, exposed=EXPOSED)


class AlreadyRunning(RuntimeError):
    pass


def lock_path(address):
    return side_file(address, ".lock")


def _take_lifetime_lock(address):
    """Held while the server lives: whoever gets it knows any socket file there is stale."""
    fd = os.open(lock_path(address), os.O_RDWR | os.O_CREAT, 0o600)
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
    global _store
    address = config.address
    if isinstance(address, str):
        directory = os.path.dirname(address)
        os.makedirs(directory, mode=0o700, exist_ok=True)
    lock_fd = _take_lifetime_lock(address)
    state = None
    try:
        if isinstance(address, str) and os.path.exists(address):
            os.unlink(address)  # stale: its server is gone, or we would not hold the lock
        _raise_fd_limit()
        _store = store = TaskStore(
            max_results=config.max_results, result_ttl=config.result_ttl,
            max_queue=config.max_queue, max_tasks_per_worker=config.max_tasks_per_worker)
        store.set_meta(
            address=config.address_text, version=__version__, alias=config.alias,
            kind=config.kind, python=sys.version.split()[0], embedded=config.embedded,
            workers_expected=config.workers, threads=config.threads,
            time_limit=config.time_limit, max_worker_memory=config.max_worker_memory,
            max_task_memory=config.max_task_memory, retry=config.retry,
            queues=list(config.queues), max_payload=config.max_payload)
        if config.state_dir is not None:
            # Before the socket exists: no client sees the store until it is restored.
            state = StateDir(config.state_dir, config.fsync, config.journal_limit)
            state.lock()
            if discard_state:
                state.discard()
            state.open(store, {"pid": os.getpid(), "version": __version__,
                               "address": config.address_text})
            store.state_health = state.health
        # socket file 0600 whatever the caller's umask (bind() creates it 0777 & ~umask)
        old_umask = os.umask(0o177)
        try:
            # Not StoreManager.get_server(): it builds a stock `Server` whatever `_Server`
            # says (only start() uses `_Server`), and our serve_client would never run.
            server = StoreServer(StoreManager._registry, address, config.authkey, "pickle")
        finally:
            os.umask(old_umask)
        # Pin the store under a fixed id: thin clients call it without creating proxies.
        server.id_to_obj[STORE_IDENT] = (store, frozenset(EXPOSED), None)
        server.id_to_refcount[STORE_IDENT] = 1
        # 3.12 listens with a backlog of 16; a restart of every web worker is a connect herd.
        server.listener._listener._socket.listen(512)
        if config.max_payload is not None:
            server.message_limit = config.max_payload + MESSAGE_HEADROOM
        server.max_connections = config.max_connections
        server.handshake_timeout = config.connect_timeout
        server.stop_event = threading.Event()
        process.current_process()._manager_server = server

        stop = threading.Event()
        urgent = threading.Event()

        def request_stop(signum, frame):
            if stop.is_set():
                urgent.set()  # second signal: skip the grace period
            stop.set()

        supervisor = Supervisor(config, store, owner_pid=owner_pid, on_owner_lost=stop.set,
                                grace=grace)
        store.on_reload = supervisor.request_reload
        if install_signals:
            signal.signal(signal.SIGTERM, request_stop)
            signal.signal(signal.SIGINT, request_stop)
            signal.signal(signal.SIGHUP, lambda signum, frame: _reload_on_signal(supervisor))
        supervisor.start()
        scheduler = Scheduler(config, store)  # after any restored state: it reads last runs
        scheduler.start()
        # Accept last: the first client to get in sees workers and schedules planned (earlier
        # connections wait in the listen backlog, well within their CONNECT_TIMEOUT).
        threading.Thread(target=server.accepter, name="accepter", daemon=True).start()
        logger.info("task server %s listening on %s (%d workers x %d threads)",
                    __version__, config.address_text, config.workers, config.threads)
        if ready is not None:
            ready()
        while not stop.wait(0.5):
            pass
        scheduler.stop()
        owner_gone = supervisor.owner_lost
        logger.info("task server stopping: draining (grace %.1f s)", 0 if owner_gone else grace)
        supervisor.shutdown(grace=0 if owner_gone else grace, urgent=urgent)
        # Clients blocked in wait() were just woken with their tasks' final records (FAILED,
        # WorkerLost, for those cut off): let their connection threads reply before we exit.
        time.sleep(SHUTDOWN_LINGER)
        server.stop_event.set()
        if state is not None:
            state.close()  # the final snapshot: the next start replays no journal
            state = None
        unlink = server.listener._listener._unlink  # the listener's finalizer (None for TCP)
        if unlink is not None:
            unlink()  # runs once: the socket file goes now, not at interpreter exit
        logger.info("task server stopped")
    finally:
        if state is not None:  # failed before serving: release the directory, write nothing
            state.release()
        os.close(lock_fd)


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
    except (StateError, StateDirInUse) as exc:
        logger.error("refusing to start: %s", exc)
        sys.exit(1)

