"""The thin client: one authenticated connection per (process, thread, address), with timeouts.

    StoreClient.call("get", id) ──pickle──> socket ──> the server's event loop (server/)
                                                       -> TaskStore.get(id) (the pinned "store")
                   <── ("#RETURN", value) | ("#ERROR", exc) ──

It speaks the stock `multiprocessing.managers` wire protocol to the pinned store object, but
without proxies: no refcount round trips, no finalizers that can hang at exit, and:
- SO_RCVTIMEO/SO_SNDTIMEO on a blocking socket (stock connections have no timeout at all);
- TCP_NODELAY (otherwise each new TCP connection stalls ~40 ms in Nagle + delayed ACK);
- the connection is dropped after ANY exception inside a call, because an interrupted call
  leaves the reply of one request to be read as the reply of the next;
- the pid is checked on every call, so a connection inherited through fork() is never reused.

When a call fails, what happens next depends on what failed (call() below):

    connect refused / no socket file ──> ServerUnavailable "no server is listening there"
    no answer within `timeout` (a stall) ─┬─ idempotent call (methods.RETRY_ON_NEW_CONNECTION):
      (connect, handshake or reply)       │   again on a new connection until `patience`
                                          │   (3 x CONNECT_TIMEOUT) has passed since the start
                                          └─ then, or for any other call: ServerStalled, with
                                             maybe_applied when the request had gone out
    a KEPT connection turns out dead ────┬─ the request was not written (EPIPE): any call, once
      (the server restarted since)       ├─ written, but idempotent: once
                                         └─ else ServerUnavailable, maybe_applied
"""

import os
import socket
import struct
import threading
import time
from multiprocessing import AuthenticationError, connection, managers

from ..exceptions import ServerAuthenticationError, ServerStalled, ServerUnavailable
from ..protocol.config import describe
from ..protocol.methods import EXPOSED, REFUSED, RETRY_ON_NEW_CONNECTION, STORE_IDENT
from ..protocol.wire import read_message, write_message

# An idempotent call that gets no answer is tried again on new connections for this many
# CONNECT_TIMEOUTs in all (the first try included): a stall shorter than about that succeeds.
STALL_PATIENCE = 3
RETRY_PAUSE = 0.05   # seconds between two tries (a stall costs a timeout per try anyway)
MIN_TRY = 0.1        # seconds: the shortest socket timeout a last try gets
_STALL = (BlockingIOError, TimeoutError)  # SO_RCVTIMEO/SO_SNDTIMEO ran out (EAGAIN)
_NOT_LISTENING = (FileNotFoundError, ConnectionRefusedError)


def set_socket_timeout(fd, timeout):
    """SO_RCVTIMEO/SO_SNDTIMEO on a blocking socket (0: none). Not settimeout(), which makes the
    fd non-blocking, so that a plain os.read would fail at once."""
    timeval = struct.pack("ll", int(timeout), int((timeout % 1) * 1e6))
    sock = socket.socket(fileno=fd)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    finally:
        sock.detach()


def _connect(address, authkey, timeout):
    # TCP is IPv4 only: parse_address refuses an IPv6 ADDRESS.
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        set_socket_timeout(sock.fileno(), timeout)
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(address)
        conn = connection.Connection(sock.detach())
    finally:
        sock.close()
    try:
        connection.answer_challenge(conn, authkey)
        connection.deliver_challenge(conn, authkey)
        conn.send((None, "accept_connection", ("django-tasks-shared",), {}))
        kind, value = conn.recv()
        if kind != "#RETURN":
            raise ServerUnavailable(f"task server at {describe(address)} refused the "
                                    f"connection: {value}")
    except BaseException:
        conn.close()
        raise
    return conn


class _Failed(Exception):
    """One try of a call failed at the socket: `exc` (OSError or EOFError), on a `fresh`
    connection or a kept one, after the request was `written` in full or not."""

    def __init__(self, exc, fresh, written):
        super().__init__(exc)
        self.exc, self.fresh, self.written = exc, fresh, written


class StoreClient:
    """Calls TaskStore methods on the server at `address`; safe to share between threads.

    `timeout` (CONNECT_TIMEOUT) bounds each blocking step: connect, each handshake message,
    the reply. `patience` (default STALL_PATIENCE x timeout; 0: never) is how long in all an
    idempotent call keeps trying on new connections while the server does not answer."""

    def __init__(self, address, authkey, timeout=5.0, patience=None):
        self.address = address
        self.authkey = authkey
        self.timeout = timeout
        self.patience = STALL_PATIENCE * timeout if patience is None else patience
        self._local = threading.local()

    def _connection(self, timeout):
        """(connection, fresh): the thread's connection, made now (with `timeout` on its
        socket) if it had none. Raises ServerUnavailable, or _Failed for a socket error."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn, False
        local.conn = None  # inherited through fork(): the parent owns that socket
        try:
            conn = _connect(self.address, self.authkey, timeout)
        except AuthenticationError as exc:
            if REFUSED in str(exc):  # the server said why it would not serve
                reason = str(exc).split(REFUSED, 1)[1].strip(" '\"")
                raise ServerUnavailable(
                    f"task server at {describe(self.address)} refused the connection: {reason}. "
                    f"Too many processes or threads hold a connection; raise "
                    f"OPTIONS['MAX_CONNECTIONS'], or find the client that opens so many.") from None
            raise ServerAuthenticationError(
                f"task server at {describe(self.address)} rejected the authkey ({exc}): every "
                f"process must use the same OPTIONS['AUTHKEY'] (or the same SECRET_KEY, from "
                f"which it is derived).") from None
        except (OSError, EOFError) as exc:
            raise _Failed(exc, True, False) from exc
        local.conn, local.pid = conn, os.getpid()
        return conn, True

    def call(self, method, *args):
        """One round trip: the value the store's `method` returned, or the exception it raised
        (as is); ServerUnavailable (ServerStalled for a stall) when no answer comes. See the
        module docstring for what is tried again."""
        idempotent = method in RETRY_ON_NEW_CONNECTION
        started = time.monotonic()
        tries, written, lost_retried = 0, False, False
        while True:
            tries += 1
            # A try after the first gets only what is left of the patience, so that the call
            # gives up close to `patience` whatever step the stall catches.
            limit = None if tries == 1 else \
                max(min(self.timeout, started + self.patience - time.monotonic()), MIN_TRY)
            try:
                return self._try(method, args, limit)
            except _Failed as failed:
                written = written or failed.written
                exc = failed.exc
                if isinstance(exc, _STALL):
                    if idempotent and time.monotonic() + RETRY_PAUSE + MIN_TRY < \
                            started + self.patience:
                        time.sleep(RETRY_PAUSE)
                        continue
                    raise self._stalled(method, exc, tries, started, written) from exc
                if isinstance(exc, _NOT_LISTENING):
                    raise self._error(ServerUnavailable(
                        f"task server at {describe(self.address)} is unavailable: no server is "
                        f"listening there ({type(exc).__name__}). Start it with `manage.py "
                        f"tasks_server`, or set OPTIONS['AUTOSTART'] = True."), written) from exc
                if not failed.fresh and not lost_retried and (idempotent or not failed.written):
                    # A kept connection from before a server restart (or its death): once more
                    # on a new one; safe, as nothing was sent or the call is idempotent.
                    lost_retried = True
                    continue
                raise self._lost(method, exc, failed) from exc

    def _try(self, method, args, limit):
        conn, fresh = self._connection(self.timeout if limit is None else limit)
        written = False
        try:
            fd = conn.fileno()
            write_message(fd, (STORE_IDENT, method, args, {}))
            written = True
            kind, value = read_message(fd)
        except BaseException as exc:
            self.close()  # the reply may still arrive: never reuse this connection
            if isinstance(exc, (OSError, EOFError)):
                raise _Failed(exc, fresh, written) from exc
            raise
        if limit is not None and limit != self.timeout:
            set_socket_timeout(fd, self.timeout)  # a shortened last try: the full one from now
        if kind == "#RETURN":
            return value
        if kind == "#ERROR":
            raise value
        raise ServerUnavailable(f"task server at {describe(self.address)} failed: {value}")

    def _stalled(self, method, exc, tries, started, written):
        tried = "" if tries == 1 else \
            f" on {tries} connections over {time.monotonic() - started:.1f} s"
        applied = (f" The {method!r} request had reached it and may still be carried out."
                   if written else "")
        return self._error(ServerStalled(
            f"task server at {describe(self.address)} is unavailable: no answer within "
            f"{self.timeout:g} s (CONNECT_TIMEOUT){tried}: it is stalled (stopped, swapping, "
            f"blocked) or overloaded.{applied}"), written)

    def _lost(self, method, exc, failed):
        where = describe(self.address)
        what = f"{type(exc).__name__}: {exc}"
        if not failed.fresh:
            text = f"task server at {where} closed the connection ({what}): it stopped or " \
                   f"restarted since the last call"
        elif failed.written:
            text = f"task server at {where} dropped the connection during {method!r} ({what})"
        elif isinstance(exc, (EOFError, ConnectionError)):
            text = (f"task server at {where} dropped the new connection before it was set up "
                    f"({what}): it is stopping, or something else listens there")
        else:
            text = f"cannot connect to the task server at {where}: {what}"
        if failed.written:
            text += f"; the {method!r} request had reached it and may have been carried out"
        return self._error(ServerUnavailable(text), failed.written)

    @staticmethod
    def _error(error, written):
        error.maybe_applied = written
        return error

    def close(self):
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None and self._local.pid == os.getpid():
            conn.close()


class StoreManager(managers.BaseManager):
    """A stock `multiprocessing.managers` client of the server: `StoreManager(address,
    authkey).connect(); m.store()` gives a proxy of the store (the event loop answers the
    manager's create/incref/decref). StoreClient above is what this package uses."""


StoreManager.register(STORE_IDENT, exposed=EXPOSED)
