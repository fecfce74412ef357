"""Message framing of `multiprocessing.connection`, the one codec of client and server: a 4-byte
big-endian length (or -1 and an 8-byte length), then the bytes (a pickle, or a handshake token).

    client (blocking socket):  write_message(fd, obj) ── one write() ──>
                               read_message(fd, limit) <── usually one read() ──
    server (non-blocking):     Peer.frames() cuts frames out of what arrived with header_at();
                               replies are frame(pickle) / encode(obj), written by the loop

`Connection.send/recv` build a ForkingPickler (a copy of its dispatch table) per message and
read the header and the body with separate system calls; on the hot path of every task that
costs about 20 us in the client and as much in the server, hence these functions. The client's
sockets carry SO_RCVTIMEO/SO_SNDTIMEO, so a read can raise BlockingIOError.
"""

import os
import pickle
import struct

_READ = 65536
_INT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
_LONG_HEADER = struct.Struct("!iQ")
HANDSHAKE_LIMIT = 256  # bytes of a handshake frame, as multiprocessing's recv_bytes(256) allows


class MessageTooLarge(OSError):
    """A peer announced a message over the limit: drop the connection, allocate nothing."""

    def __init__(self, size, limit):
        super().__init__(f"a message of {size} bytes, over the limit of {limit}")
        self.size, self.limit = size, limit


def frame(data):
    """`data` (bytes) with its length header."""
    if len(data) > 0x7FFFFFFF:
        return _LONG_HEADER.pack(-1, len(data)) + data
    return _INT.pack(len(data)) + data


def encode(obj):
    """One framed pickle of `obj`."""
    return frame(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))


def header_at(buf, pos, limit=None):
    """(size, start of the body) of the frame whose header starts at `pos`, or None when the
    header is not complete yet. A size over `limit` raises MessageTooLarge."""
    if len(buf) - pos < 4:
        return None
    size, start = _INT.unpack_from(buf, pos)[0], pos + 4
    if size == -1:
        if len(buf) - pos < 12:
            return None
        size, start = _LONG.unpack_from(buf, pos + 4)[0], pos + 12
    if size < 0 or (limit is not None and size > limit):
        raise MessageTooLarge(size, limit)
    return size, start


def write_message(fd, obj):
    view = memoryview(encode(obj))
    while view:
        view = view[os.write(fd, view):]


def _read_more(fd, size):
    more = os.read(fd, size)
    if not more:
        raise EOFError("connection closed")
    return more


def read_message(fd, limit=None):
    """The next message on `fd`. With `limit` (bytes), a larger announced size raises
    MessageTooLarge before anything is allocated for the body."""
    chunk = _read_more(fd, _READ)
    while (header := header_at(chunk, 0, limit)) is None:
        chunk += _read_more(fd, _READ)
    size, start = header
    if len(chunk) - start >= size:
        return pickle.loads(memoryview(chunk)[start:start + size])
    buf = bytearray(chunk[start:])
    while len(buf) < size:
        buf += _read_more(fd, min(size - len(buf), 1 << 20))
    return pickle.loads(buf)
