"""The start table: where a worker publishes the real start of each task it had reserved.

Prefetch (docs/architecture.md, "Prefetch") hands a worker thread a task to run now plus up to
PREFETCH - 1 reserved ones, numbered by a per-thread reservation number `rseq`. A reserved task
stays READY in the server until the worker starts it, and the server must know, without a round
trip and even if the worker hangs or dies, whether it started and when:

    file (one per worker process; the supervisor makes it and passes its fd to the worker):
      header  64 bytes: MAGIC, version, threads, capacity
      thread k's region: `capacity` entries of 32 bytes, entry rseq % capacity:
                         (rseq u64, state u32, pad, t f64, pad)  state: STARTED or REVOKED
    worker, before it runs reserved task r:  start(k, r, server_pid)  under the region's lock:
        revoked (cancelled, or given back to the queue)?  -> REVOKED: skip it
        our server gone (getppid() changed)?            -> GONE: run nothing more
        else write (r, STARTED, time.time())            -> that time: the task's real start
    server (store/reservations.py), under the same lock:
        revoke(k, r)   -> REVOKED written, or the time it started (too late to revoke)
        started(...)   -> which reservations started, and when (TIME_LIMIT, views, a dead worker)

The lock is a POSIX record lock (fcntl.lockf) on the thread's region: owned per process, so the
worker and the server exclude each other, and the worker's threads never touch each other's
region. It makes "check revoked, then write STARTED" atomic against "check STARTED, then write
REVOKED", which plain shared memory cannot promise across processes. A process that dies holding
it releases it; the server only ever tries it without blocking (a worker SIGSTOPped inside the
few microseconds it is held must not stall the server), and treats "could not tell" as started.
A capacity of PREFETCH entries is enough: a thread claims a new batch only after it started (or
skipped) every task of the last one, and the server reads the table before numbering new ones.
"""

import fcntl
import mmap
import os
import struct
import tempfile
import time

STARTS_DIR = "starts"  # STATE_DIR/starts/<worker id>: the tables a restart reads
MAGIC = b"DTSSTART"
VERSION = 1
HEADER = struct.Struct("<8sIII")     # magic, version, threads, capacity
HEADER_SIZE = 64
ENTRY = struct.Struct("<QI4xd8x")   # rseq, state, t
ENTRY_SIZE = 32
STARTED, REVOKED = 1, 2
GONE = object()      # start(): the server that handed the task out is gone: run nothing
UNKNOWN = object()   # revoke() / started(): the lock could not be had: assume it started
LOCK_TRIES = 20      # x 0.1 ms: how long the server tries a region's lock (it never blocks)


class StartTable:
    def __init__(self, fd, threads, capacity, path=None):
        self.fd = fd
        self.threads = threads
        self.capacity = capacity
        self.path = path
        self.size = HEADER_SIZE + threads * capacity * ENTRY_SIZE
        self.map = mmap.mmap(fd, self.size)

    # ---- making and opening ------------------------------------------------------------------

    @classmethod
    def create(cls, threads, capacity, path=None):
        """A new, zeroed table (the server's side): in `path` (a STATE_DIR's, so that a restart
        after a crash can read it), else in an unnamed file that goes with the last fd."""
        if path is None:
            if hasattr(os, "memfd_create"):
                fd = os.memfd_create("django-tasks-shared-starts", os.MFD_CLOEXEC)
            else:  # pragma: no cover (not Linux)
                handle, name = tempfile.mkstemp(prefix="dts-starts-")
                os.unlink(name)
                fd = handle
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        size = HEADER_SIZE + threads * capacity * ENTRY_SIZE
        os.ftruncate(fd, size)
        os.pwrite(fd, HEADER.pack(MAGIC, VERSION, threads, capacity), 0)
        return cls(fd, threads, capacity, path)

    @classmethod
    def attach(cls, fd, path=None):
        """The table behind `fd` (a worker's inherited fd, or a file opened at a restore);
        ValueError if it is not one."""
        magic, version, threads, capacity = HEADER.unpack(os.pread(fd, HEADER.size, 0))
        if magic != MAGIC or version != VERSION or threads < 1 or capacity < 1:
            raise ValueError(f"not a start table (version {VERSION}): {path or fd}")
        if os.fstat(fd).st_size < HEADER_SIZE + threads * capacity * ENTRY_SIZE:
            raise ValueError(f"start table cut short: {path or fd}")
        return cls(fd, threads, capacity, path)

    @classmethod
    def open(cls, path):
        """An existing table file (a STATE_DIR restore), or ValueError / OSError."""
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            return cls.attach(fd, path)
        except BaseException:
            os.close(fd)
            raise

    def close(self):
        if self.fd is None:
            return
        self.map.close()
        os.close(self.fd)
        self.fd = None

    # ---- the worker's side ---------------------------------------------------------------------

    def start(self, thread, rseq, server_pid):
        """Mark reservation `rseq` of `thread` started now: its start time (time.time()),
        REVOKED (do not run it) or GONE (the server is gone: run nothing more)."""
        offset, length = self._region(thread)
        fcntl.lockf(self.fd, fcntl.LOCK_EX, length, offset)
        try:
            at = offset + (rseq % self.capacity) * ENTRY_SIZE
            seen, state, _ = ENTRY.unpack_from(self.map, at)
            if seen == rseq and state == REVOKED:
                return REVOKED
            if os.getppid() != server_pid:
                return GONE  # a server restored after a crash may have put it back in the queue
            now = time.time()
            ENTRY.pack_into(self.map, at, rseq, STARTED, now)
            return now
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, length, offset)

    # ---- the server's side ---------------------------------------------------------------------

    def revoke(self, thread, rseq):
        """Revoke reservation `rseq` of `thread` unless it started: None (revoked: the worker
        will skip it), its start time (too late), or UNKNOWN (the lock could not be had)."""
        offset, length = self._region(thread)
        if not self._try_lock(offset, length):
            return UNKNOWN
        try:
            at = offset + (rseq % self.capacity) * ENTRY_SIZE
            seen, state, started = ENTRY.unpack_from(self.map, at)
            if seen == rseq and state == STARTED:
                return started
            ENTRY.pack_into(self.map, at, rseq, REVOKED, 0.0)
            return None
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, length, offset)

    def started(self, wanted, patience=0.0):
        """{(thread, rseq): start time} of the `wanted` reservations that started, or UNKNOWN
        when the lock could not be had within about `patience` seconds (a restore's read
        waits a little for a worker of the dead server caught inside its lock)."""
        if not self._try_lock(0, self.size, patience):
            return UNKNOWN
        try:
            out = {}
            for thread, rseq in wanted:
                if not 0 <= thread < self.threads:
                    continue
                at = self._region(thread)[0] + (rseq % self.capacity) * ENTRY_SIZE
                seen, state, started = ENTRY.unpack_from(self.map, at)
                if seen == rseq and state == STARTED:
                    out[(thread, rseq)] = started
            return out
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, self.size, 0)

    # ---- internals ---------------------------------------------------------------------------

    def _region(self, thread):
        if not 0 <= thread < self.threads:
            raise ValueError(f"thread {thread} outside the start table's {self.threads}")
        length = self.capacity * ENTRY_SIZE
        return HEADER_SIZE + thread * length, length

    def _try_lock(self, offset, length, patience=0.0):
        deadline = time.monotonic() + patience
        attempt = 0
        while True:
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, offset)
                return True
            except OSError:  # EACCES / EAGAIN: a worker thread holds it for a few microseconds
                attempt += 1
                if attempt >= LOCK_TRIES and time.monotonic() >= deadline:
                    return False
                time.sleep(0.0001 if attempt < LOCK_TRIES else 0.01)
