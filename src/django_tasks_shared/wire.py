"""Message framing of `multiprocessing.connection` (4-byte big-endian length, or -1 and an
8-byte length, then a pickle), done with one write and usually one read per message.

`Connection.send/recv` build a ForkingPickler (a copy of its dispatch table) per message and
read the header and the body with separate system calls; on the hot path of every task that
costs about 20 us in the client and as much in the server. Both sides use these two functions
on blocking sockets (the client's carry SO_RCVTIMEO/SO_SNDTIMEO, so a read can raise
BlockingIOError).
"""

import os
import pickle
import struct

_READ = 65536


def write_message(fd, obj):
    data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    if len(data) > 0x7FFFFFFF:
        header = struct.pack("!iQ", -1, len(data))
    else:
        header = struct.pack("!i", len(data))
    view = memoryview(header + data)
    while view:
        view = view[os.write(fd, view):]


def _read_more(fd, size):
    more = os.read(fd, size)
    if not more:
        raise EOFError("connection closed")
    return more


class MessageTooLarge(OSError):
    """A peer announced a message over the limit: drop the connection, allocate nothing."""


def read_message(fd, limit=None):
    """The next message on `fd`. With `limit` (bytes), a larger announced size raises
    MessageTooLarge before anything is allocated for the body."""
    chunk = _read_more(fd, _READ)
    while len(chunk) < 4:
        chunk += _read_more(fd, _READ)
    size, start = struct.unpack("!i", chunk[:4])[0], 4
    if size == -1:
        while len(chunk) < 12:
            chunk += _read_more(fd, _READ)
        size, start = struct.unpack("!Q", chunk[4:12])[0], 12
    if limit is not None and size > limit:
        raise MessageTooLarge(f"a message of {size} bytes, over the limit of {limit}")
    if len(chunk) - start >= size:
        return pickle.loads(memoryview(chunk)[start:start + size])
    buf = bytearray(chunk[start:])
    while len(buf) < size:
        buf += _read_more(fd, min(size - len(buf), 1 << 20))
    return pickle.loads(buf)
