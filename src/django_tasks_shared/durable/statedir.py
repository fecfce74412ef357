"""STATE_DIR: the server's queue and results on disk, so that restarts and crashes lose nothing.

    start:  flock STATE_DIR/lock and the directory itself (one server per directory, even when
            the lock file was removed; a 0.1.0 server knows only the file)
            newest snapshot-N.state  +  journal-N.log, journal-N+1.log ...  (replayed in order)
              -> store.restore(): pending tasks keep their order, results their LRU order; a task
                 RUNNING when the previous server died ends FAILED (WorkerLost)
            new journal-G.log (G = next number); snapshot-G.state of the restored state written
            in the background; then older files are removed
    serve:  every change -> journal (journal.py), written before the reply goes out
            flusher thread, every second (guard.py): counters checkpoint, fsync
            (FSYNC="everysec"), compaction when the journal passes JOURNAL_LIMIT (a new journal,
            then a snapshot of that moment in a background thread, then the old files go);
            storage faults: a full or failing disk (changes refused, retried every second), a
            file removed, replaced or truncated (a fresh snapshot and journal from memory)
    stop:   (after the drain) a final snapshot; the journals it covers are removed

A snapshot-N.state holds the state at the moment journal-N.log was started: snapshot N plus
journals N, N+1... is the whole history, so a (non-final) snapshot N whose journal N is missing
is refused at start, naming both files. A snapshot file is written as *.tmp, fsynced, renamed
and the directory fsynced, so it is always complete. Damaged files are never deleted or
overwritten: the server refuses to start and names file and offset; `tasks_server
--discard-state` moves every state file into a `discarded-<time>/` folder and starts empty.
"""

import fcntl
import gc
import logging
import os
import re
import threading
import time
from typing import Any

from . import format as fmt
from .format import StateDirInUse, StateError, frame, fsync_dir, read_entries
from .guard import Guard
from .journal import Journal
from .restore import Restored
from .starts import PreviousStarts

logger = logging.getLogger("django_tasks_shared.state")

FLUSH_EVERY = 1.0
_FILE = re.compile(r"^(snapshot|journal)-(\d{8})\.(state|log)$")
_TMP = re.compile(r"^snapshot-(\d{8})\.state\.tmp$")


def _ident(st):
    return st.st_dev, st.st_ino


def _same(a, b):
    return _ident(a) == _ident(b)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _name(kind, number):
    return f"snapshot-{number:08d}.state" if kind == "snapshot" else f"journal-{number:08d}.log"


class StateDir:
    def __init__(self, path, fsync="everysec", journal_limit=64 << 20):
        self.path = os.path.abspath(path)
        self.fsync = fsync
        self.journal_limit = journal_limit
        self.journal: Any = None      # the Journal, once open()
        self.number = 0            # the current journal's (and latest snapshot's) number
        self.last_snapshot_at = None
        self.restored = {"pending": 0, "results": 0, "interrupted": 0}
        self.torn = []
        self.compactions = 0
        self._lock_fd: int | None = None
        self._dir_fd: int | None = None
        self.snapshot_file = None  # (path, (st_dev, st_ino)) of the newest snapshot written
        self.snapshot_error = None  # the last snapshot's error, until one succeeds
        self.guard = Guard(self)
        self._store: Any = None       # the TaskStore, once open()
        self._stop = threading.Event()
        self._flusher = None
        self._snapshotting = threading.Lock()  # one snapshot at a time
        self._snapshot_thread = None

    # ---- start -----------------------------------------------------------------------------------

    def lock(self):
        """Create the directory (0700) and take its lifetime locks, or raise StateDirInUse."""
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            os.chmod(self.path, 0o700)
        except OSError as exc:
            raise StateError(f"cannot create or use STATE_DIR {self.path}: {exc}") from None
        self.relock_file()
        try:
            self.relock_dir()
        except BaseException:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            raise

    def relock_file(self):
        """flock STATE_DIR/lock (new, or made again by the guard after it was removed)."""
        fd = os.open(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateDirInUse(f"STATE_DIR {self.path} is in use by another task server (pid "
                                f"{holder}); only one server may use a state directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        old, self._lock_fd = self._lock_fd, fd
        if old is not None:
            os.close(old)

    def relock_dir(self):
        """flock the directory itself: held even if someone removes or replaces the lock file.
        A no-op while the directory is the one locked; after it was removed or replaced, it is
        made again and locked (StateDirInUse if another server got there first)."""
        if self._dir_fd is not None:
            try:
                if _same(os.stat(self.path), os.fstat(self._dir_fd)):
                    return
            except FileNotFoundError:
                pass
            os.makedirs(self.path, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirInUse(
                f"STATE_DIR {self.path} is in use by another task server (it holds the "
                f"directory's lock; the `lock` file in it was removed or replaced); only one "
                f"server may use a state directory") from None
        old, self._dir_fd = self._dir_fd, fd
        if old is not None:
            os.close(old)
            self.relock_file()  # a new directory: its lock file is new too

    def _files(self):
        """{("snapshot" | "journal", number): name} of the state files present."""
        found = {}
        for name in os.listdir(self.path):
            match = _FILE.match(name)
            if match:
                found[(match.group(1), int(match.group(2)))] = name
        return found

    def discard(self):
        """Move every state file (and unfinished *.tmp) aside, keeping it; returns the folder."""
        names = [n for n in os.listdir(self.path) if _FILE.match(n) or n.endswith(".tmp")]
        if not names:
            return None
        folder = os.path.join(self.path, time.strftime("discarded-%Y%m%d-%H%M%S"))
        while os.path.exists(folder):
            folder += "x"
        os.mkdir(folder, 0o700)
        for name in names:
            os.rename(os.path.join(self.path, name), os.path.join(folder, name))
        fsync_dir(self.path)
        logger.warning("moved %d state file(s) aside into %s", len(names), folder)
        return folder

    def read(self):
        """Rebuild the state from the newest snapshot and the journals after it."""
        files = self._files()
        snapshots = sorted(n for kind, n in files if kind == "snapshot")
        journals = sorted(n for kind, n in files if kind == "journal")
        base = snapshots[-1] if snapshots else 0
        replay = [n for n in journals if n >= base]
        state = Restored()
        first = 1
        if snapshots:
            path = os.path.join(self.path, files[("snapshot", base)])
            ops, _ = read_entries(path, fmt.KIND_SNAPSHOT)
            if not ops or ops[0][0] != "m" or ops[-1][0] != "e" or ops[-1][1] != len(ops) - 2:
                raise StateError(f"{path}: incomplete snapshot (no end marker)")
            for op in ops:
                state.apply(op)
            # A snapshot written at a stop has no journal of its own number.
            first = base + 1 if ops[0][1].get("final") else base
            if first == base and not replay:  # (a gap after it is refused below)
                raise StateError(
                    f"{path} needs {os.path.join(self.path, _name('journal', base))}, which is "
                    f"missing: the changes made after that snapshot are not there. Restore the "
                    f"journal, or move the state aside with `manage.py tasks_server "
                    f"--discard-state` (it keeps the files)")
        if replay and replay != list(range(first, first + len(replay))):
            raise StateError(
                f"{self.path}: journals {replay} do not follow "
                + (f"snapshot {base}" if snapshots else "an empty state")
                + f" without a gap (the first must be {first}); a file is missing. Restore "
                f"it, or move the state aside with `manage.py tasks_server --discard-state` "
                f"(it keeps the files)")
        for number in replay:
            path = os.path.join(self.path, files[("journal", number)])
            ops, torn = read_entries(path, fmt.KIND_JOURNAL)
            for op in ops:
                state.apply(op)
            if torn:
                logger.warning("journal tail dropped: %s", torn)
                state.torn.append(torn)
        self.number = max([base, *replay])
        self.last_snapshot_at = state.snapshot_at
        self.torn = state.torn
        return state

    def open(self, store, facts):
        """Restore into `store`, start journaling into a new file, start the flusher. `facts`
        (pid, version...) go into the journal's hello entry."""
        started = time.monotonic()
        # Unpickling 200,000 records would otherwise run dozens of full collections (3x the
        # time); afterwards gc.freeze() keeps the restored records out of every later one.
        gc.disable()
        try:
            state = self.read()
        finally:
            gc.enable()
        who = state.server or {}
        # (end_interrupted adds whether it runs again)
        interrupted = f"the task server (pid {who.get('pid', '?')}) died while this task ran"
        starts = PreviousStarts(self.path)  # reserved tasks: started, or back to the queue
        pending, results, running = store.restore(state.records, state.durable,
                                                  state.counters, started=starts.started)
        self._store = store
        self._facts = facts
        # The restored state becomes snapshot N+1, taken at the moment journal N+1 starts; the
        # WorkerLost endings of interrupted tasks are that journal's first entries, so a crash
        # before the snapshot is done replays to the very same endings.
        try:
            self._compact(background=False, first=True)
        except OSError as exc:
            raise StateError(f"cannot write STATE_DIR {self.path}: {exc}") from None
        store.end_interrupted(running, interrupted)
        if not store.commit():
            raise StateError(f"cannot write STATE_DIR {self.path}: "
                             f"{self.journal.failure.describe()}")
        starts.remove()
        gc.freeze()
        self.restored = {"pending": pending, "results": results, "interrupted": len(running)}
        logger.info("state restored from %s in %.2f s: %d pending, %d results, %d interrupted%s",
                    self.path, time.monotonic() - started, *self.restored.values(),
                    f", {len(self.torn)} torn journal tail(s) dropped" if self.torn else "")
        self._flusher = threading.Thread(target=self._flush_loop, name="state-flusher",
                                         daemon=True)
        self._flusher.start()

    # ---- while serving ---------------------------------------------------------------------------

    def _flush_loop(self):
        while not self._stop.wait(FLUSH_EVERY):
            try:
                self.guard.tick()
            except Exception:  # a bug must not stop the flusher; faults are the guard's job
                logger.exception("state flusher failed")

    def _compact(self, background, first=False, rewrite=False):
        """Start journal N+1 and write snapshot N+1 of that moment; then drop older files.
        A rewrite (guard.py) writes the snapshot here and now and raises what fails."""
        number = self.number + 1
        path = os.path.join(self.path, _name("journal", number))
        hello = dict(self._facts, journal=number, started_at=time.time())

        fd, size = Journal.create(path, hello)

        def switch():
            if self.journal is None:
                self.journal = Journal(fd, path, size, self.fsync)
                self.journal.on_failure = self.guard.on_failure
            else:
                self.journal.switch(fd, path, size)
            return self.journal

        meta, ids = self._store.journal.attach(switch)
        self.number = number
        self._snapshotting.acquire()
        if rewrite:
            try:
                self._write_snapshot(number, meta, ids)
            finally:
                self._snapshotting.release()
            return

        def write():
            try:
                self._write_snapshot(number, meta, ids)
            except Exception as exc:
                self.snapshot_error = f"snapshot {number} failed: {type(exc).__name__}: {exc}"
                logger.error("writing snapshot %d failed (the journals are kept): %s", number,
                             exc)
            finally:
                self._snapshotting.release()

        if not first:
            self.compactions += 1
        if background or first:
            self._snapshot_thread = threading.Thread(target=write, name="state-snapshot",
                                                     daemon=True)
            self._snapshot_thread.start()
        else:
            write()

    def _write_snapshot(self, number, meta, ids):
        final = os.path.join(self.path, _name("snapshot", number))
        tmp = final + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        is_open = True
        try:
            chunks = 0
            _write_all(fd, fmt.header(fmt.KIND_SNAPSHOT) + frame(["m", meta]))
            for chunk in self._store.journal.snapshot_chunks(ids):
                chunks += 1
                _write_all(fd, chunk)
            _write_all(fd, frame(["e", chunks]))
            os.fsync(fd)
            is_open = False
            os.close(fd)
            os.rename(tmp, final)
            fsync_dir(self.path)
        except BaseException:
            if is_open:
                os.close(fd)
            try:  # a full disk: give the space back (a renamed snapshot is complete, kept)
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self.snapshot_file = (final, _ident(os.stat(final)))
        self.snapshot_error = None
        self.last_snapshot_at = meta["written_at"]
        # Everything before snapshot N is covered by it now (as is a *.tmp left by a crash).
        for (_kind, n), name in self._files().items():
            if n < number:
                os.unlink(os.path.join(self.path, name))
        for name in os.listdir(self.path):
            match = _TMP.match(name)
            if match and int(match.group(1)) < number:
                os.unlink(os.path.join(self.path, name))
        fsync_dir(self.path)

    # ---- stop ------------------------------------------------------------------------------------

    def close(self):
        """After the drain: the final snapshot (so the next start reads no journal), unlock."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=10)
        try:
            if self._store is not None:
                with self._snapshotting:  # a compaction in flight finishes first
                    pass
                self._store.journal.checkpoint_counters()
                try:
                    self.relock_dir()  # (a directory removed at the last moment: made again)
                    self._final_snapshot()
                except (OSError, StateDirInUse) as exc:
                    # The journals stay (nothing is deleted before a snapshot is complete);
                    # what the journal could not take is written now, if it can be.
                    kept = self.journal.retry() if self.journal.failure else True
                    logger.error("the final snapshot of %s failed: %s; the journals are kept%s",
                                 self.path, exc, "" if kept else
                                 ": changes made while the disk failed are NOT on disk")
        finally:
            self.release()

    def release(self):
        """Close the journal and give the directory up (alone: start-up failed, write nothing)."""
        self._stop.set()
        if self.journal is not None:
            self.journal.close()
        for name in ("_lock_fd", "_dir_fd"):
            if getattr(self, name) is not None:
                os.close(getattr(self, name))
                setattr(self, name, None)

    def _final_snapshot(self):
        number = self.number + 1

        def switch():  # no new journal: nothing changes after this point
            self.journal.commit()
            return None

        meta, ids = self._store.journal.attach(switch)
        meta["final"] = True
        self._write_snapshot(number, meta, ids)
        self.number = number
        logger.info("state saved: snapshot %d with %d record(s) in %s", number, len(ids),
                    self.path)

    def health(self):
        error = self.guard.error() or self.snapshot_error
        return self.guard.health() | {
            "dir": self.path,
            "fsync": self.fsync,
            "format": fmt.FORMAT_VERSION,
            "journal": self.journal.path if self.journal else None,
            "journal_bytes": self.journal.bytes if self.journal else 0,
            "journal_limit": self.journal_limit,
            "last_snapshot_at": self.last_snapshot_at,
            "compactions": self.compactions,
            "restored": dict(self.restored),
            "torn_tails": len(self.torn),
            "torn": list(self.torn),
            "error": error,
        }


__all__ = ["StateDir", "StateDirInUse", "StateError"]
