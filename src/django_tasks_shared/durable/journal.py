"""The append-only journal writer of a STATE_DIR (the format: format.py).

    TaskStore (lock held) ── append(op) ──> in-memory buffer (a list of framed bytes)
    server, once per loop turn, BEFORE the turn's replies ── commit() ──> os.write (and, with
                                                              FSYNC="always", fsync)
    flusher thread, every second ── checkpoint + commit, fsync (FSYNC="everysec")

Group commit: whoever commits first writes everything buffered so far with one write() (and one
fsync() with FSYNC="always"); a commit whose changes that covered returns without a system call.

Positions are logical: bytes appended since the server started, across journal files. A reply
may go out once `durable()` has reached the position of the change it reports (the event loop
holds it until then, server/eventloop.py).

A write that fails (ENOSPC, EDQUOT, EIO, EROFS...) loses nothing: the entries stay in the buffer
(ahead of any appended since), the file is cut back (ftruncate) to its last whole entry, and
`failure` is set: the store refuses every change until it is cleared, and commit() writes
nothing. The state directory's guard (guard.py) retries once a second: retry() in the same file,
or, when the file cannot be trusted (`tainted`: the cut-back or an fsync failed, or the file was
removed), a switch() to a fresh file that carries the buffer. The buffer is one ordered stream
whichever file it lands in, and files are replayed in order, so the restart sees every entry
once and in order.
"""

import errno
import os
import threading
import time
from dataclasses import dataclass

from ..protocol.config import FSYNC_MODES
from .format import KIND_JOURNAL, frame, fsync_dir, header


@dataclass
class StorageFailure:
    """Why the STATE_DIR cannot be written now (health shows it; the refusals name it)."""

    error: str          # "[Errno 28] No space left on device"
    errno: str          # "ENOSPC" (or the exception's name when it has no errno)
    op: str             # what failed: "write", "fsync", "create", "snapshot", "lock", ...
    path: str           # the file (or directory) it failed on
    since: float        # time.time() of the first failure
    refused: int = 0    # changes refused since (counted by the store, under its lock)

    @classmethod
    def of(cls, exc, op, path):
        code = getattr(exc, "errno", None)
        name = errno.errorcode.get(code, type(exc).__name__) if code else type(exc).__name__
        return cls(str(exc) or name, name, op, path, time.time())

    def describe(self):
        return f"{self.errno} ({self.error}) on {self.op} of {os.path.basename(self.path)}"

    def as_dict(self):
        return {"errno": self.errno, "error": self.error, "op": self.op, "file": self.path,
                "since": self.since, "refused": self.refused}


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
        self.failure: StorageFailure | None = None  # set: writing fails, changes are refused
        self.tainted = False  # this file may end in a partial entry: never append to it again
        self.cap: int | None = None  # a rewrite in progress: nothing past this is durable yet
        self.on_failure = None  # guard.py: called (write lock held) when writing starts failing
        # The system calls, looked up here: a property test injects faults at this seam.
        self._os_write, self._os_fsync = os.write, os.fsync

    @staticmethod
    def create(path, hello):
        """A new journal file whose header and hello entry are on disk: (fd, size). Done
        before the switch, outside the store lock. A failure leaves no file behind."""
        data = header(KIND_JOURNAL) + frame(["h", hello])
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
            fsync_dir(os.path.dirname(path))
        except BaseException:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        return fd, len(data)

    def switch(self, fd, path, size):
        """Go on in a file made by create() (caller holds the store lock: no appends). What
        the old file cannot take (it failed, or is tainted) is carried into the new one."""
        with self._write_lock:
            old = self._fd
            if not self.tainted and self.failure is None and self._write_buffered() and \
                    self.fsync == "always":
                # Inside the lock: a commit() must never count bytes of the old file as synced
                # because it fsynced the new one.
                try:
                    self._os_fsync(old)
                    self._synced = self._written
                except OSError as exc:
                    self._fail(exc, "fsync", taint=True)
            self._fd, self.path, self.bytes = fd, path, size
            self.tainted = False
            old_ok = self.failure is None
        if self.fsync == "everysec" and old_ok:
            try:
                self._os_fsync(old)
            except OSError:
                pass  # the snapshot of this switch covers what that file held
        os.close(old)

    def append(self, op):
        data = frame(op)
        with self._buffer_lock:
            self._buffer.append(data)
            self._appended += len(data)
            return self._appended

    @property
    def appended(self):
        return self._appended

    def durable(self):
        """The position up to which a reply may go out (see the module docstring)."""
        position = self._synced if self.fsync == "always" else self._written
        cap = self.cap
        return position if cap is None else min(position, cap)

    def commit(self):
        """Make everything appended so far durable as FSYNC says, before the caller replies to
        a client. True when it is; False while writing fails or a rewrite is in progress (the
        entries stay buffered: hold the replies that depend on them)."""
        position = self._appended
        if self._synced >= position or (self._written >= position and self.fsync != "always"):
            return self.cap is None or self.cap >= position
        if self.failure is not None or self.tainted:
            return False  # the guard retries once a second; writing now would only fail again
        with self._write_lock:
            if self._written < position and self.failure is None:
                self._write_buffered()
            if self.fsync == "always" and self._synced < position and self._written >= position \
                    and self.failure is None:
                written = self._written
                try:
                    self._os_fsync(self._fd)
                    self._synced = written
                except OSError as exc:
                    self._fail(exc, "fsync", taint=True)
        return self.durable() >= position

    def sync(self):
        """The once-a-second fsync of FSYNC="everysec" (a no-op with "never"); False when
        writing failed."""
        with self._write_lock:
            if self.failure is not None or self.tainted or not self._write_buffered():
                return False
            if self.fsync == "never" or self._synced >= self._written:
                return True
            written, fd = self._written, os.dup(self._fd)
        try:  # outside the write lock: requests keep writing while the disk catches up
            self._os_fsync(fd)
        except OSError as exc:
            with self._write_lock:
                self._fail(exc, "fsync", taint=True)
            return False
        finally:
            os.close(fd)
        with self._write_lock:
            self._synced = max(self._synced, written)
        return True

    def retry(self):
        """Write what was kept, in the same file (it must not be tainted), and sync it; True
        when writing works again (failure cleared)."""
        with self._write_lock:
            if self.tainted or not self._write_buffered():
                return False
            written = self._written
            if self.fsync != "never":
                try:
                    self._os_fsync(self._fd)
                except OSError as exc:
                    self._fail(exc, "fsync", taint=True)
                    return False
            self._synced = max(self._synced, written)
            self.failure = None
            return True

    def abandon(self):
        """Never write to this file again (it is gone or damaged): what is buffered, and what
        is appended from now on, goes into the file of the next switch()."""
        with self._write_lock:
            self.tainted = True

    def fail(self, exc, op, path, taint=False):
        """Writing failed outside this class (a snapshot, a new file): refuse changes too."""
        with self._write_lock:
            self._fail(exc, op, path, taint)

    def _fail(self, exc, op, path=None, taint=False):  # write lock held
        if taint:
            self.tainted = True
        if self.failure is None:
            self.failure = StorageFailure.of(exc, op, path or self.path)
            if self.on_failure is not None:
                self.on_failure(self.failure)

    def _write_buffered(self):
        """Write the buffer (write lock held); True when all of it was written. On an error,
        the file is cut back to its last whole entry and the rest stays buffered."""
        with self._buffer_lock:
            chunks, self._buffer = self._buffer, []
            appended = self._appended
        if not chunks:
            self._written = appended
            return True
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        done, total = 0, len(data)
        try:
            view = memoryview(data)
            while done < total:
                done += self._os_write(self._fd, view[done:])
        except OSError as exc:
            whole = kept_from = 0
            for chunk in chunks:  # the entries written whole
                if whole + len(chunk) > done:
                    break
                whole += len(chunk)
                kept_from += 1
            kept = chunks[kept_from:]
            taint = False
            if done > whole:  # half an entry: cut it off, or never append here again
                try:
                    os.ftruncate(self._fd, self.bytes + whole)
                except OSError:
                    taint = True
            self.bytes += whole
            with self._buffer_lock:
                self._buffer[:0] = kept  # ahead of what was appended meanwhile
            self._written = appended - sum(map(len, kept))
            self._fail(exc, "write", taint=taint)
            return False
        self.bytes += total
        self._written = appended
        return True

    def identity(self):
        """(fstat of the open file, its path, the bytes this writer put there) for guard.py."""
        with self._write_lock:
            if self._fd is None:
                return None
            return os.fstat(self._fd), self.path, self.bytes

    def close(self):
        with self._write_lock:
            if self._fd is None:
                return
            written = self.failure is None and not self.tainted and self._write_buffered()
            if written and self.fsync != "never":
                try:
                    self._os_fsync(self._fd)
                except OSError:
                    pass
            os.close(self._fd)
            self._fd = None
