"""The connection storm itself: thousands of sockets opened at once from one thread.

    open_storm(address, authkey, n, handshakes)
      1. n non-blocking sockets, connect() each in a tight loop (a unix socket whose listen
         backlog is full answers EAGAIN at once: those are retried on every loop turn);
      2. one selectors loop reads what the server says first on each socket:
           "#CHALLENGE#..."  accepted   "#REFUSED# reason"  refused   EOF / error / timeout  failed
      3. the first `handshakes` accepted sockets go on with the whole client handshake of
         client.py `_connect` (answer the challenge, deliver ours, then
         (None, "accept_connection", ("x",), {}) answered ("#RETURN", None)), all interleaved in
         the same loop; the rest stay raw (connected, never authenticated);
      -> Storm: the open sockets by kind, counts, refusal reasons, timings.
    close_all(socks) closes them at once.

Hand-written rather than multiprocessing.connection.answer_challenge/deliver_challenge on
blocking sockets: a blocking handshake costs a thread (or a turn) per connection on OUR side,
and the storm would then measure this tool instead of the server. tests/test_storm.py checks it
against the stdlib's own server side.
"""

import errno
import hmac
import os
import pickle
import selectors
import socket
import struct
import time
from dataclasses import dataclass, field

CHALLENGE, WELCOME, FAILURE = b"#CHALLENGE#", b"#WELCOME#", b"#FAILURE#"
REFUSED = b"#REFUSED#"  # client.py REFUSED: what a full server sends instead of its challenge
DIGEST = "sha256"  # what the stdlib server side offers since 3.12
ACCEPT = pickle.dumps((None, "accept_connection", ("x",), {}), pickle.HIGHEST_PROTOCOL)

# The steps of one connection; each one waits for a message from the server.
GREETING, WELCOMED, ANSWERED, ACCEPTED, IDLE, RAW, DONE = range(7)


def frame(payload):
    """multiprocessing.connection framing: a 4-byte big-endian length, then the bytes."""
    return struct.pack("!i", len(payload)) + payload


def response_to(authkey, challenge):
    """What answer_challenge() sends back for `challenge` (the bytes after #CHALLENGE#)."""
    if challenge.startswith(b"{") and b"}" in challenge:
        name = challenge[1:challenge.index(b"}")].decode("ascii")
        return b"{%s}%s" % (name.encode("ascii"), hmac.new(authkey, challenge, name).digest())
    return hmac.new(authkey, challenge, "md5").digest()  # a pre-3.12 server side


def expected_reply(authkey, challenge, reply):
    """True when `reply` answers our `challenge` (the stdlib's _verify_challenge)."""
    if not reply.startswith(b"{%s}" % DIGEST.encode()):
        return False
    mac = reply[len(DIGEST) + 2:]
    return hmac.compare_digest(hmac.new(authkey, challenge, DIGEST).digest(), mac)


@dataclass
class Conn:
    sock: socket.socket
    handshake: bool = False  # go on past the greeting to an authenticated, idle connection
    step: int = GREETING
    buffer: bytes = b""
    ours: bytes = b""  # the challenge we delivered


@dataclass
class Storm:
    requested: int
    handshakes_requested: int
    accepted: int = 0  # the server greeted us with its challenge
    refused: int = 0  # the server sent #REFUSED# with a reason
    failed: int = 0  # connect error, EOF, bad handshake, or no answer in time
    handshaken: int = 0  # accepted, authenticated and accept_connection answered
    backlog_retries: int = 0  # connect() calls that met a full listen backlog (EAGAIN)
    reasons: dict = field(default_factory=dict)  # refusal / failure text -> count
    # Seconds from the first connect() to: the last one that went through; the last greeting
    # (or refusal); the last completed handshake. None when that never happened.
    connect_seconds: float | None = None
    greet_seconds: float | None = None
    handshake_seconds: float | None = None
    cpu_seconds: float = 0.0  # CPU this process spent opening them
    started: float = 0.0  # time.monotonic() of the first connect()
    handshakes_left: int = 0
    idle: list = field(default_factory=list)  # authenticated sockets, held open
    raw: list = field(default_factory=list)  # greeted but never authenticated, held open

    def note(self, kind, reason):
        setattr(self, kind, getattr(self, kind) + 1)
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def counts(self):
        return {k: getattr(self, k) for k in (
            "requested", "accepted", "refused", "failed", "handshakes_requested", "handshaken",
            "backlog_retries")} | {"reasons": self.reasons} | {
            f"{k}_s": None if v is None else round(v, 3) for k, v in (
                ("connect", self.connect_seconds), ("greet", self.greet_seconds),
                ("handshake", self.handshake_seconds), ("cpu", self.cpu_seconds))}


def _family(address):
    if isinstance(address, str):
        return socket.AF_UNIX
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


def open_storm(address, authkey, n, handshakes=0, timeout=30.0):
    """Open `n` connections at once; the first `handshakes` greeted ones authenticate."""
    storm = Storm(n, handshakes)
    cpu = time.process_time()
    sel = selectors.DefaultSelector()
    pending = []  # sockets whose connect() must be retried (backlog full) or completed (TCP)
    live = {}
    started = time.monotonic()
    for _ in range(n):
        sock = socket.socket(_family(address), socket.SOCK_STREAM)
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:  # as client.py: no Nagle stall on the small writes
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending.append(sock)
    deadline = started + timeout
    storm.started, storm.handshakes_left = started, handshakes
    while (pending or live) and time.monotonic() < deadline:
        still = []
        for i, sock in enumerate(pending):
            code = sock.connect_ex(address)
            if code in (0, errno.EISCONN):
                conn = Conn(sock)
                live[sock.fileno()] = conn
                sel.register(sock, selectors.EVENT_READ, conn)
            elif code == errno.EAGAIN:
                # The backlog is full: so it is for the rest too until the server accepts.
                storm.backlog_retries += 1
                still.extend(pending[i:])
                break
            elif code in (errno.EINPROGRESS, errno.EALREADY):
                still.append(sock)  # TCP: completes in the background
            else:
                storm.note("failed", f"connect: {os.strerror(code)}")
                sock.close()
        if pending and not still:
            storm.connect_seconds = time.monotonic() - started
        pending = still
        for key, _ in sel.select(0.005 if pending else 0.1):
            conn = key.data
            outcome = _advance(conn, authkey, storm)
            if outcome is None or (outcome == "greeted" and conn.handshake):
                continue
            sel.unregister(conn.sock)
            del live[conn.sock.fileno()]
            if outcome == "greeted":
                storm.raw.append(conn.sock)
            elif outcome == "idle":
                storm.handshake_seconds = time.monotonic() - started
                storm.idle.append(conn.sock)
            else:
                conn.sock.close()
    for sock in pending:
        storm.note("failed", "connect: no room in the listen backlog in time")
        sock.close()
    for conn in live.values():
        storm.note("failed", "no answer in time" if conn.step == GREETING
                   else "handshake not answered in time")
        conn.sock.close()
    sel.close()
    # The storm's own CPU: on a small machine it is CPU the server and the probe do not get.
    storm.cpu_seconds = time.process_time() - cpu
    return storm


def _advance(conn, authkey, storm):
    """Read what arrived and take the next step(s); None while more is expected, else
    "greeted" (the challenge came), "idle" (handshake done), or "gone" (refused, failed)."""
    try:
        data = conn.sock.recv(65536)
    except BlockingIOError:
        return None
    except OSError as exc:
        storm.note("failed", f"recv: {exc.strerror or exc}")
        return "gone"
    if not data:
        storm.note("failed", "closed by the server" + (
            " before its greeting" if conn.step == GREETING else " during the handshake"))
        return "gone"
    conn.buffer += data
    while len(conn.buffer) >= 4:
        size = struct.unpack("!i", conn.buffer[:4])[0]
        if len(conn.buffer) < 4 + size:
            return None
        message, conn.buffer = conn.buffer[4:4 + size], conn.buffer[4 + size:]
        outcome = _step(conn, authkey, message, storm)
        if outcome is not None:
            return outcome
    return None


def _step(conn, authkey, message, storm):
    """One message of the handshake (client.py `_connect`, written out)."""
    try:
        if conn.step == GREETING:
            storm.greet_seconds = time.monotonic() - storm.started
            if message.startswith(REFUSED):
                storm.note("refused", message[len(REFUSED):].decode(errors="replace").strip())
                return "gone"
            if not message.startswith(CHALLENGE):
                storm.note("failed", f"unexpected greeting {message[:30]!r}")
                return "gone"
            storm.accepted += 1
            # The first greeted ones go on to authenticate, whichever socket they are.
            conn.handshake = storm.handshakes_left > 0
            storm.handshakes_left -= conn.handshake
            if not conn.handshake:
                conn.step = RAW
                return "greeted"
            conn.sock.send(frame(response_to(authkey, message[len(CHALLENGE):])))
            conn.step = WELCOMED
            return "greeted"
        if conn.step == WELCOMED:
            if message != WELCOME:
                storm.note("failed", "the server rejected our authkey")
                return "gone"
            conn.ours = b"{%s}%s" % (DIGEST.encode(), os.urandom(40))
            conn.sock.send(frame(CHALLENGE + conn.ours))
            conn.step = ANSWERED
            return None
        if conn.step == ANSWERED:
            if not expected_reply(authkey, conn.ours, message):
                conn.sock.send(frame(FAILURE))
                storm.note("failed", "the server answered our challenge wrongly")
                return "gone"
            # Two small writes, as the stdlib client does: #WELCOME#, then the request.
            conn.sock.send(frame(WELCOME))
            conn.sock.send(frame(ACCEPT))
            conn.step = ACCEPTED
            return None
        if conn.step == ACCEPTED:
            kind, value = pickle.loads(message)
            if kind != "#RETURN":
                storm.note("failed", f"accept_connection answered {kind}: {value}")
                return "gone"
            storm.handshaken += 1
            conn.step = IDLE
            return "idle"
    except (OSError, pickle.UnpicklingError, ValueError) as exc:
        storm.note("failed", f"handshake: {type(exc).__name__}: {exc}")
        return "gone"
    storm.note("failed", f"a message after the handshake: {message[:30]!r}")
    return "gone"


def close_all(socks):
    """Close every socket in one tight loop; the seconds it took."""
    started = time.monotonic()
    for sock in socks:
        sock.close()
    socks.clear()
    return time.monotonic() - started
