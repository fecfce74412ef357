"""The append-only journal writer of a STATE_DIR (the format: format.py).

    TaskStore (lock held) ── append(op) ──> in-memory buffer (a list of framed bytes)
    server, once per loop turn, BEFORE the turn's replies ── commit() ──> os.write (and, with
                                                              FSYNC="always", fsync)
    flusher thread, every second ── checkpoint + commit, fsync (FSYNC="everysec")

Group commit: whoever commits first writes everything buffered so far with one write() (and one
fsync() with FSYNC="always"); a commit whose changes that covered returns without a system call.
"""

import os
import threading

from ..protocol.config import FSYNC_MODES
from .format import KIND_JOURNAL, frame, fsync_dir, header


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

    def commit(self):
        """Make everything appended so far durable as FSYNC says, before the caller replies to
        a client."""
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
