"""One client connection of the event loop: its socket, the bytes read but not yet parsed, the
replies not yet written, and its handshake until it has authenticated.

    accept() ─> Peer(handshake) ──challenge / response, both ways (Handshake)──> Peer(ready)
    readable:  os.read ─> frames(data) ─> [frame bytes, ...] ─> the loop unpickles and serves
    reply:     queue(msg) ─> pickled and framed into `out` ─> flush(): os.write, the rest when
               the socket is writable again

Framing is `multiprocessing.connection`'s (protocol/wire.py, the client's codec too): a 4-byte
big-endian length (or -1 and an 8-byte one), then the bytes. The handshake is the server side of
its `deliver_challenge` then `answer_challenge` (HMAC of the authkey over random bytes, each side
proving it to the other), done a frame at a time, so no thread waits on a slow or silent client.
"""

import os
import traceback
from multiprocessing import connection as mpc

from ..protocol.wire import encode, frame, header_at

CHALLENGE, WELCOME, FAILURE = b"#CHALLENGE#", b"#WELCOME#", b"#FAILURE#"


class Handshake:
    """Where a new connection stands in the handshake. `step(frame)` returns (reply or None,
    state): "more" (go on), "done" (authenticated) or "failed" (close after the reply)."""

    __slots__ = ("authkey", "message", "stage")

    def __init__(self, authkey):
        self.authkey = authkey
        # What deliver_challenge sends: the digest named, so the client cannot downgrade it.
        self.message = b"{sha256}" + os.urandom(mpc.MESSAGE_LENGTH)  # type: ignore[attr-defined]
        self.stage = 0

    def challenge(self):
        return CHALLENGE + self.message

    def step(self, data):
        data = bytes(data)
        if self.stage == 0:  # the client's answer to our challenge
            try:
                mpc._verify_challenge(  # type: ignore[attr-defined]
                    self.authkey, self.message, data)
            except Exception:  # AuthenticationError, or a malformed answer
                return FAILURE, "failed"
            self.stage = 1
            return WELCOME, "more"
        if self.stage == 1:  # the client's own challenge: prove we hold the key too
            if not data.startswith(CHALLENGE) or len(data) - len(CHALLENGE) < 20:
                return None, "failed"
            self.stage = 2
            try:
                return mpc._create_response(  # type: ignore[attr-defined]
                    self.authkey, data[len(CHALLENGE):]), "more"
            except Exception:
                return None, "failed"
        return None, ("done" if data == WELCOME else "failed")


class Peer:
    __slots__ = ("sock", "fd", "inbuf", "need", "out", "writing", "handshake", "deadline",
                 "parked", "held", "closed", "close_after_flush", "hot", "active")

    def __init__(self, sock, handshake, deadline):
        self.sock = sock
        self.fd = sock.fileno()
        # bytes of an incomplete frame (a bytearray when not empty)
        self.inbuf: bytes | bytearray = b""
        self.need = 0          # total bytes inbuf must reach before a frame can complete
        self.out = []          # framed replies not yet written
        self.writing = False   # registered for EVENT_WRITE: out did not fit the socket buffer
        self.handshake = handshake  # None once authenticated
        self.deadline = deadline    # monotonic: authenticate before it or be dropped
        self.parked = None     # the request this peer waits on (a long-poll), if any
        self.held = []         # frames that came while parked (pipelining is not done)
        self.closed = False
        self.close_after_flush = False
        self.hot = False       # in the loop's main epoll (it made a store call), else "cold"
        self.active = False    # a store call since the loop's last idle sweep

    def frames(self, data, limit):
        """The complete frames in the bytes read so far plus `data` (a list), keeping the rest.
        A frame announced over `limit` raises MessageTooLarge before anything is allocated."""
        if self.inbuf:
            self.inbuf += data  # a bytearray: appended in place
            if len(self.inbuf) < self.need:  # a large message still arriving: parse nothing
                return ()
            buf = self.inbuf
        else:
            buf = data
        frames = []
        pos, total = 0, len(buf)
        self.need = 0
        while (header := header_at(buf, pos, limit)) is not None:
            size, start = header
            end = start + size
            if end > total:
                self.need = end - pos
                break
            frames.append(buf[start:end])
            pos = end
        if pos == total:
            self.inbuf = b""
        elif pos or not isinstance(buf, bytearray):
            self.inbuf = bytearray(buf[pos:])
        return frames

    def queue_raw(self, data):
        self.out.append(frame(data))

    def queue(self, msg):
        try:
            data = encode(msg)
        except Exception:
            data = encode(("#UNSERIALIZABLE", traceback.format_exc()))
        self.out.append(data)

    def flush(self):
        """Write what is queued; True if all of it went out. Raises OSError if the peer is gone."""
        out = self.out
        data = out[0] if len(out) == 1 else b"".join(out)
        try:
            written = os.write(self.fd, data)
        except BlockingIOError:
            written = 0
        if written == len(data):
            out.clear()
            return True
        out[:] = [memoryview(data)[written:]]
        return False
