"""The start table: where a worker publishes, without a round trip, the real start of each task
it had reserved and the outcome of each task whose report waits for its batch's next claim.

Prefetch (docs/architecture.md, "Prefetch") hands a worker thread a batch: the task to run now
and up to PREFETCH - 1 reserved behind it, each numbered by a per-thread reservation number
`rseq`. A reserved task stays READY in the server until the worker starts it; an outcome may be
held a few milliseconds until the next claim carries it. The server must know, even if the
worker hangs or dies, what started (and when) and what finished (and how):

    file (one per worker process; the supervisor makes it and passes its fd to the worker):
      header  64 bytes: MAGIC, version, threads, capacity
      thread k's region: `capacity` entries of ENTRY_SIZE bytes, entry rseq % capacity:
          (rseq u64, state u32, length u32, t f64) + up to PAYLOAD bytes: a pickled outcome
          state: STARTED (at t), FINISHED (started at t, its outcome held: the payload), REVOKED
    worker, between two tasks of a batch: step(k, finished=(r, outcome), start=r', server pid)
        under the region's lock, one hold:
        the outcome of task r (held for the next claim): FINISHED r, its pickle
        reserved task r' revoked (cancelled, or given back to the queue)?  -> REVOKED: skip it
        our server gone (getppid() changed)?                            -> GONE: run nothing
        else STARTED r' at time.time()                                  -> that time
    server (store/reservations.py), under the same lock:
        revoke(k, r)    -> REVOKED written, or what it says (started, or finished: too late)
        entries(...)    -> what started and finished (views, TIME_LIMIT, a dead worker's tasks)

The lock is a POSIX record lock (fcntl.lockf) on the thread's region: owned per process, so the
worker and the server exclude each other, and the worker's threads never touch each other's
region. It makes "check revoked, then write STARTED" atomic against "check STARTED, then write
REVOKED", which plain shared memory cannot promise across processes. A process that dies holding
it releases it; the server only ever tries it without blocking (a worker SIGSTOPped inside the
few microseconds it is held must not stall the server), and treats "could not tell" as started.
An entry's header is written after its payload, so a worker killed mid-write leaves the entry
as it was (started: the task ends WorkerLost, never run twice). A capacity of PREFETCH entries
is enough: a batch numbers at most PREFETCH tasks, a thread claims again only after it started
(or skipped) every one of its batch, and the server reads the table before numbering new ones.
"""

import fcntl
import mmap
import os
import struct
import tempfile
import time

STARTS_DIR = "starts"  # STATE_DIR/starts/<worker id>: the tables a restart reads
MAGIC = b"DTSSTART"
VERSION = 2
HEADER = struct.Struct("<8sIII")     # magic, version, threads, capacity
HEADER_SIZE = 64
ENTRY = struct.Struct("<QIId")       # rseq, state, payload length, t
ENTRY_SIZE = 256
PAYLOAD = ENTRY_SIZE - ENTRY.size    # 232 bytes: an outcome that does not fit is sent at once
STARTED, REVOKED, FINISHED = 1, 2, 3
GONE = object()      # step(): the server that handed the task out is gone: run nothing
UNKNOWN = object()   # revoke() / entries(): the lock could not be had: assume it started
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

    def step(self, thread, finished=None, start=None, server_pid=None):
        """Between two tasks of a batch, in one hold of the thread's lock: `finished` (rseq,
        pickled outcome of at most PAYLOAD bytes) marks a task done with the outcome it holds
        for the next claim; `start` (a reserved task's rseq) starts it now. Returns the start's
        time (time.time()), REVOKED (do not run it), GONE (the server is gone: run nothing
        more), or None without `start`."""
        offset, length = self._region(thread)
        fcntl.lockf(self.fd, fcntl.LOCK_EX, length, offset)
        try:
            if finished is not None:
                rseq, payload = finished
                at = offset + (rseq % self.capacity) * ENTRY_SIZE
                seen, state, _, started = ENTRY.unpack_from(self.map, at)
                if seen != rseq or state != STARTED:
                    started = 0.0  # a batch's first task: the server knows its start
                self.map[at + ENTRY.size:at + ENTRY.size + len(payload)] = payload
                ENTRY.pack_into(self.map, at, rseq, FINISHED, len(payload), started)
            if start is None:
                return None
            at = offset + (start % self.capacity) * ENTRY_SIZE
            seen, state, _, _ = ENTRY.unpack_from(self.map, at)
            if seen == start and state == REVOKED:
                return REVOKED
            if os.getppid() != server_pid:
                return GONE  # a server restored after a crash may have put it back in the queue
            now = time.time()
            ENTRY.pack_into(self.map, at, start, STARTED, 0, now)
            return now
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, length, offset)

    # ---- the server's side ---------------------------------------------------------------------

    def revoke(self, thread, rseq):
        """Revoke reservation `rseq` of `thread` unless it started: None (revoked: the worker
        will skip it), its entry (state, t, payload) when it started or finished (too late),
        or UNKNOWN (the lock could not be had)."""
        offset, length = self._region(thread)
        if not self._try_lock(offset, length):
            return UNKNOWN
        try:
            at = offset + (rseq % self.capacity) * ENTRY_SIZE
            entry = self._entry(at, rseq)
            if entry is not None:
                return entry
            ENTRY.pack_into(self.map, at, rseq, REVOKED, 0, 0.0)
            return None
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, length, offset)

    def entries(self, wanted, patience=0.0):
        """{(thread, rseq): (state, start time, pickled outcome or None)} of the `wanted` ones
        that started or finished, or UNKNOWN when the lock could not be had within about
        `patience` seconds (a restore waits a little for a worker of the dead server caught
        inside its lock; everyone else never blocks)."""
        if not self._try_lock(0, self.size, patience):
            return UNKNOWN
        try:
            out = {}
            for thread, rseq in wanted:
                if not 0 <= thread < self.threads:
                    continue
                entry = self._entry(self._region(thread)[0] + (rseq % self.capacity) *
                                    ENTRY_SIZE, rseq)
                if entry is not None:
                    out[(thread, rseq)] = entry
            return out
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, self.size, 0)

    # ---- internals ---------------------------------------------------------------------------

    def _entry(self, at, rseq):
        """(state, t, payload or None) of the entry at `at` if it is rseq's and it started or
        finished, else None."""
        seen, state, size, started = ENTRY.unpack_from(self.map, at)
        if seen != rseq or state not in (STARTED, FINISHED):
            return None
        payload = None
        if state == FINISHED and 0 < size <= PAYLOAD:
            payload = bytes(self.map[at + ENTRY.size:at + ENTRY.size + size])
        return state, started, payload

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
