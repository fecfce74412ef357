"""The on-disk format of a STATE_DIR, and the append-only journal writer.

    TaskStore (lock held) ── append(op) ──> in-memory buffer (a list of framed bytes)
    server, after a request, BEFORE its reply ── commit(position) ──> os.write (and, with
                                                                       FSYNC="always", fsync)
    flusher thread, every second ── checkpoint + commit, fsync (FSYNC="everysec")

Every file (journal or snapshot) starts with a 16-byte header (MAGIC, format version, kind),
then framed entries: 4-byte big-endian length, 4-byte CRC-32 of the payload, the payload (one
list, pickled with protocol 5: records are JSON-compatible, but pickle reads ~4x faster than
json on this kind of machine, which decides how fast a server with 200,000 records starts).
The directory is 0700 and only the server's user can write it: the same trust as the code.
An entry is an *operation*:

    ["p", record]           a record stored whole (enqueue, or replaced)
    ["P", {id: record}]     records stored whole, in bulk (snapshots, 256 a chunk)
    ["s", id, {fields}]     fields of a record set (start, finish, fail...)
    ["f", id]               a record forgotten (evicted, expired)
    ["d", key, value]       store.durable[key] = value (["d", key] deletes it)
    ["c", {counters}]       the counters as they stand (written at most once a second)
    ["h", {facts}]          hello: first entry of a journal (server pid, time, generation)

Every operation sets absolute values, so applying one twice, or to a record already in a later
state, gives the same result: that is what lets a snapshot be written while clients keep
changing the state (see statedir.py).

Group commit: a request thread calls commit(position) with the buffer position its changes
reached; the first thread in writes everything buffered so far with one write() (and one
fsync() with FSYNC="always"); threads whose changes that covered return without a system call.
"""

import os
import pickle
import struct
import threading
import zlib

from .config import FSYNC_MODES

MAGIC = b"DTSHARED"
FORMAT_VERSION = 1
KIND_JOURNAL, KIND_SNAPSHOT = 1, 2
HEADER = struct.Struct("!8sHH4x")
FRAME = struct.Struct("!II")



class StateError(RuntimeError):
    """A state file is damaged or from a newer format: the server refuses to start."""


def frame(op):
    payload = pickle.dumps(op, 5)
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def header(kind):
    return HEADER.pack(MAGIC, FORMAT_VERSION, kind)


def read_entries(path, kind):
    """Decode a whole file: (list of operations, torn) where `torn` is None or a description
    of a torn tail that was dropped (only a journal can have one: the crash came mid-write).

    Raises StateError naming the file and the byte offset for anything else: a wrong magic or
    kind, a newer format version, a checksum mismatch followed by more data, bad JSON.
    """
    with open(path, "rb") as f:
        return decode_entries(f.read(), kind, path)


def decode_entries(data, kind, path="<bytes>"):
    """read_entries() of bytes already in memory; `path` only names them in errors."""
    size = len(data)
    if size < HEADER.size:
        if kind == KIND_JOURNAL and MAGIC.startswith(data[:8]):
            return [], f"{path}: header cut short at {size} bytes (created just before a crash)"
        raise StateError(f"{path}: too short for a header ({size} bytes)")
    magic, version, file_kind = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise StateError(f"{path}: not a django-tasks-shared state file (bad magic at offset 0)")
    if version > FORMAT_VERSION:
        raise StateError(
            f"{path}: written by a newer django-tasks-shared (state format {version}, this one "
            f"reads up to {FORMAT_VERSION}); upgrade this installation, or move the state aside "
            f"with `manage.py tasks_server --discard-state`")
    if file_kind != kind:
        raise StateError(f"{path}: holds kind {file_kind}, expected {kind} (offset 4)")
    ops, offset = [], HEADER.size
    loads = pickle.loads
    view = memoryview(data)
    while offset < size:
        if size - offset < FRAME.size:
            return ops, _torn(path, kind, offset, size, "a frame header cut short")
        length, crc = FRAME.unpack_from(data, offset)
        end = offset + FRAME.size + length
        if end > size:
            if not any(data[offset:]):  # zeros: the file grew but its data never reached disk
                return ops, _torn(path, kind, offset, size, "zero-filled tail")
            return ops, _torn(path, kind, offset, size, f"an entry of {length} bytes cut short")
        payload = view[offset + FRAME.size:end]
        if zlib.crc32(payload) != crc:
            if end == size or not any(data[offset:]):
                return ops, _torn(path, kind, offset, size, "a bad checksum in the last entry")
            raise StateError(f"{path}: checksum mismatch in the entry at offset {offset} "
                             f"(of {size} bytes); the file is damaged")
        try:
            ops.append(loads(payload))
        except Exception as exc:  # a checksum collision on garbage: as damaged as it gets
            raise StateError(f"{path}: undecodable entry at offset {offset}: {exc}") from None
        offset = end
    return ops, None


def _torn(path, kind, offset, size, what):
    if kind != KIND_JOURNAL:
        raise StateError(f"{path}: {what} at offset {offset} (of {size} bytes); a snapshot is "
                         f"only ever renamed into place complete, so the file is damaged")
    return f"{path}: dropped {size - offset} byte(s) at offset {offset}: {what}"


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """Appends operations to one journal file; see the module docstring for the locking."""

    def __init__(self, fd, path, size, fsync):
        if fsync not in FSYNC_MODES:
            raise ValueError(f"FSYNC must be one of {FSYNC_MODES}, got {fsync!r}")
        self.fsync = fsync
        self._buffer_lock = threading.Lock()   # taken under the store lock, briefly
        self._write_lock = threading.Lock()    # one writer (and fsync) at a time
        self._buffer = []
        self._appended = 0    # bytes appended so far (the position commit() takes)
        self._written = 0     # bytes handed to write()
        self._synced = 0      # bytes known to be on disk
        self._fd, self.path, self.bytes = fd, path, size

    @staticmethod
    def create(path, hello):
        """A new journal file whose header and hello entry are on disk: (fd, size). Done
        before the switch, outside the store lock."""
        data = header(KIND_JOURNAL) + frame(["h", hello])
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        fsync_dir(os.path.dirname(path))
        return fd, len(data)

    def switch(self, fd, path, size):
        """Go on in a file made by create() (caller holds the store lock: no appends)."""
        with self._write_lock:
            self._write_buffered()
            old = self._fd
            if self.fsync == "always":
                # Inside the lock: a commit() must never count bytes of the old file as synced
                # because it fsynced the new one.
                os.fsync(old)
                self._synced = self._written
            self._fd, self.path, self.bytes = fd, path, size
        if self.fsync == "everysec":
            os.fsync(old)
        os.close(old)

    def append(self, op):
        data = frame(op)
        with self._buffer_lock:
            self._buffer.append(data)
            self._appended += len(data)
            return self._appended

    @property
    def position(self):
        return self._appended

    def commit(self, position=None):
        """Make everything appended up to `position` (default: all) durable as FSYNC says,
        before the caller replies to a client."""
        if position is None:
            position = self._appended
        if self._synced >= position or (self._written >= position and self.fsync != "always"):
            return
        with self._write_lock:
            if self._written < position:
                self._write_buffered()
            if self.fsync == "always" and self._synced < position:
                written = self._written
                os.fsync(self._fd)
                self._synced = written

    def sync(self):
        """The once-a-second fsync of FSYNC="everysec" (a no-op with "never")."""
        with self._write_lock:
            self._write_buffered()
            if self.fsync == "never" or self._synced >= self._written:
                return
            written, fd = self._written, os.dup(self._fd)
        try:  # outside the write lock: requests keep writing while the disk catches up
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._write_lock:
            self._synced = max(self._synced, written)

    def _write_buffered(self):
        with self._buffer_lock:
            chunks, self._buffer = self._buffer, []
            appended = self._appended
        if chunks:
            data = memoryview(b"".join(chunks))
            while data:
                data = data[os.write(self._fd, data):]
            self.bytes += sum(map(len, chunks))
        self._written = appended

    def close(self):
        with self._write_lock:
            if self._fd is None:
                return
            self._write_buffered()
            if self.fsync != "never":
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
