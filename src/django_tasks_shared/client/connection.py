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
- the pid is checked on every call, so a connection inherited through fork() is never reused;
- an idempotent call on a kept connection that turns out dead (the server restarted since) is
  repeated once on a new one, so a restart does not fail the first call of every thread.
"""

import os
import socket
import struct
import threading
from multiprocessing import AuthenticationError, connection, managers

from ..exceptions import ServerAuthenticationError, ServerUnavailable
from ..protocol.config import describe
from ..protocol.methods import EXPOSED, REFUSED, RETRY_ON_NEW_CONNECTION, STORE_IDENT
from ..protocol.wire import read_message, write_message


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
            raise ServerUnavailable(f"task server at {address} refused the connection: {value}")
    except BaseException:
        conn.close()
        raise
    return conn


class StoreClient:
    """Calls TaskStore methods on the server at `address`; safe to share between threads."""

    def __init__(self, address, authkey, timeout=5.0):
        self.address = address
        self.authkey = authkey
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self):
        """(connection, fresh): the thread's connection, made now if it had none."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn, False
        local.conn = None  # inherited through fork(): the parent owns that socket
        try:
            conn = _connect(self.address, self.authkey, self.timeout)
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
            raise ServerUnavailable(self._unavailable(exc)) from exc
        local.conn, local.pid = conn, os.getpid()
        return conn, True

    def _unavailable(self, exc):
        if isinstance(exc, (BlockingIOError, TimeoutError)):
            why = f"no answer within {self.timeout:g} s (server stalled or overloaded)"
        elif isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
            why = "no server is listening there"
        else:
            why = f"{type(exc).__name__}: {exc}"
        return (f"task server at {describe(self.address)} is unavailable: {why}. Start it with "
                f"`manage.py tasks_server`, or set OPTIONS['AUTOSTART'] = True.")

    def call(self, method, *args):
        conn, fresh = self._connection()
        try:
            fd = conn.fileno()
            write_message(fd, (STORE_IDENT, method, args, {}))
            kind, value = read_message(fd)
        except BaseException as exc:
            self.close()  # the reply may still arrive: never reuse this connection
            if isinstance(exc, (OSError, EOFError)):
                if not fresh and method in RETRY_ON_NEW_CONNECTION and \
                        not isinstance(exc, (BlockingIOError, TimeoutError)):
                    # A connection kept from before a server restart: the server is gone,
                    # maybe back. Once, on a new connection (safe: these calls are idempotent).
                    return self.call(method, *args)
                raise ServerUnavailable(self._unavailable(exc)) from exc
            raise
        if kind == "#RETURN":
            return value
        if kind == "#ERROR":
            raise value
        raise ServerUnavailable(f"task server at {describe(self.address)} failed: {value}")

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
