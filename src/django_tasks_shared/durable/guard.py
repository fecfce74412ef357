"""The STATE_DIR's guard: the once-a-second flusher, which also notices storage faults and
recovers from them by itself.

    every second (the "state-flusher" thread), in this order:
      files removed / replaced / truncated? ──> rewrite(): a fresh journal + snapshot from memory
          (the open fds' device/inode compared   (changes made meanwhile: their replies are HELD
           with the paths; sizes with what we     until the snapshot is complete: journal.cap)
           wrote)
      the `lock` file removed / replaced ──> created again and locked (a 0.1.0 server knows only it)
      writing fails (journal.failure)?
          the file is whole ──> journal.retry(): the kept entries written in the same file
          it is not (tainted) ──> rewrite()
          works again ──> resumed(): parked claims served, held replies sent, logged once
      else: counters checkpoint, fsync (FSYNC="everysec"), compaction past JOURNAL_LIMIT

    while writing fails: every change is refused before it is made (store/journaler.py),
    claims wait, reads go on; health: state.failure (errno, file, since, refused so far)

Supervisor-made changes while the journal fails (a worker died: WorkerLost; a time limit; an
expiry) are not refused: the worker is already gone, so the change is made in memory and its
entry KEPT in the buffer, exactly like the turn that first hit the error. Nobody waits for a
reply to them, and a crash before the disk recovers ends the same tasks the same way (a restart
ends every task it finds RUNNING with WorkerLost): nothing is lost or contradicted either way.
"""

import logging
import os
import time
from collections import deque

from .format import StateDirInUse

logger = logging.getLogger("django_tasks_shared.state")

EVENTS_KEPT = 10
SNAPSHOT_RETRY_MIN, SNAPSHOT_RETRY_MAX = 1.0, 30.0  # seconds: a failed snapshot tried again


def _ident(st):
    return st.st_dev, st.st_ino


def _when(t):
    return time.strftime("%H:%M:%S", time.localtime(t))


class Guard:
    def __init__(self, statedir):
        self.state = statedir
        # {"at", "what"}: files found gone, rewrites, recoveries
        self.events: deque[dict] = deque(maxlen=EVENTS_KEPT)
        self.rewrites = 0
        self.last_failure = None    # the previous failure, with recovered_at (health)
        self.failures = 0           # failures since the start (each one: refusals, then resume)
        self.current = None         # the failure being recovered from (journal.failure)
        self._rewrite_started = None  # time.time() a rewrite began (its replies were held)
        self._snapshot_retry_at = 0.0  # monotonic: when a failed snapshot may be tried again
        self._snapshot_backoff = 0.0  # seconds to the try after that one (0: none failed)
        self._rewrite = None        # why a rewrite is still needed (it failed; retried)

    # ---- the tick ------------------------------------------------------------------------------

    def tick(self):
        state = self.state
        journal = state.journal
        reason = self._rewrite or self.watch()
        if reason:
            self.rewrite(reason)
            return
        if journal.failure is not None:
            if journal.tainted:
                self.rewrite(f"{os.path.basename(journal.path)} could not be cut back to its "
                             f"last whole entry (or an fsync failed)", event=False)
            elif journal.retry():
                self.resumed()
            return
        state._store.journal.checkpoint_counters()
        if not journal.sync():
            return  # failing now: on_failure logged it; the next tick retries
        if state._snapshotting.locked():
            return
        now = time.monotonic()
        if state.snapshot_error:
            # A compaction's snapshot failed (a full disk): its journals are kept, so nothing
            # is lost, but they keep growing. Tried again after 1 s, 2 s, 4 s... (at most
            # SNAPSHOT_RETRY_MAX apart) as long as the journal itself writes.
            if not self._snapshot_backoff:
                self._snapshot_backoff = SNAPSHOT_RETRY_MIN
                self._snapshot_retry_at = now + SNAPSHOT_RETRY_MIN
            if now < self._snapshot_retry_at:
                return
            self._snapshot_backoff = min(2 * self._snapshot_backoff, SNAPSHOT_RETRY_MAX)
            self._snapshot_retry_at = now + self._snapshot_backoff
        else:
            self._snapshot_backoff = 0.0
            if journal.bytes <= state.journal_limit:
                return
        try:
            state._compact(background=True)
        except OSError as exc:  # the new journal could not be made: nothing changed
            state.snapshot_error = f"compaction failed: {exc}"
            logger.error("STATE_DIR %s: compaction failed (%s); the journals are kept, and it "
                         "is tried again", state.path, exc)

    # ---- faults ----------------------------------------------------------------------------

    def on_failure(self, failure):
        """The journal's callback when writing starts failing (any thread, write lock held):
        logged once, here; the recovery is logged once, in resumed()."""
        self.failures += 1
        self.current = failure
        logger.error(
            "STATE_DIR %s cannot be written: %s. Every change is refused until it can (no "
            "task is handed out; reads go on); the server retries every second and resumes "
            "by itself.", self.state.path, failure.describe())

    def resumed(self):
        """Everything kept is durable again: held replies go out, parked claims are served."""
        journal = self.state.journal
        journal.cap = None
        failure, self.current = self.current, None
        since, self._rewrite_started = self._rewrite_started, None
        if failure is not None:
            since = failure.since
            now = time.time()
            self.last_failure = dict(failure.as_dict(), recovered_at=now)
            logger.warning("STATE_DIR %s can be written again after %.1f s (%s); %d change(s) "
                           "were refused meanwhile; serving normally", self.state.path,
                           now - failure.since, failure.describe(), failure.refused)
            self._event(f"writing works again after {now - failure.since:.1f} s of "
                        f"{failure.errno}; {failure.refused} change(s) refused meanwhile")
        self.state._store.journal.resumed(since)

    # ---- files under the server ----------------------------------------------------------------

    def watch(self):
        """Why the state must be rewritten from memory (a file gone, replaced, truncated), or
        None. Also puts back a removed `lock` file (nothing to rewrite for that)."""
        state = self.state
        path = state.path
        try:
            here = os.stat(path)
        except FileNotFoundError:
            return f"the directory {path} was removed"
        if _ident(here) != _ident(os.fstat(state._dir_fd)):
            return f"the directory {path} was replaced"
        self._watch_lock()
        identity = state.journal.identity()
        if identity is not None:
            opened, journal_path, written = identity
            name = os.path.basename(journal_path)
            try:
                now = os.stat(journal_path)
            except FileNotFoundError:
                return f"{name} was removed"
            if _ident(now) != _ident(opened):
                return f"{name} was replaced"
            if opened.st_size < written:
                return f"{name} was truncated to {opened.st_size} of {written} bytes"
        snapshot = state.snapshot_file
        if snapshot is not None and not state._snapshotting.locked():
            snapshot_path, ident = snapshot
            try:
                if _ident(os.stat(snapshot_path)) != ident:
                    return f"{os.path.basename(snapshot_path)} was replaced"
            except FileNotFoundError:
                return f"{os.path.basename(snapshot_path)} was removed"
        return None

    def _watch_lock(self):
        state = self.state
        lock_path = os.path.join(state.path, "lock")
        try:
            if _ident(os.stat(lock_path)) == _ident(os.fstat(state._lock_fd)):
                return
            what = "replaced"
        except FileNotFoundError:
            what = "removed"
        try:
            state.relock_file()
        except (OSError, StateDirInUse) as exc:  # another (older) server took it: refuse
            self._event(f"{lock_path} was {what}, and locking it again failed: {exc}")
            logger.error("STATE_DIR %s: %s was %s and cannot be locked again: %s", state.path,
                         lock_path, what, exc)
            state.journal.fail(exc, "lock", lock_path)
            self._rewrite = self._rewrite or f"{lock_path} was {what}"
            return
        self._event(f"{lock_path} was {what}: created again and locked")
        logger.warning("STATE_DIR %s: %s was %s; created again and locked (one server per "
                       "directory holds)", state.path, lock_path, what)

    def rewrite(self, reason, event=True):
        """A fresh journal and snapshot from memory, so that nothing depends on a missing or
        damaged file. Changes go on meanwhile; their replies wait for the snapshot."""
        state = self.state
        journal = state.journal
        if self._rewrite is None:
            if event:
                self._event(f"{reason}; rewriting the state from memory")
            logger.error("STATE_DIR %s: %s; writing a fresh snapshot and journal from memory "
                         "(replies to changes wait until it is on disk)", state.path, reason)
        self._rewrite = reason
        if self._rewrite_started is None:
            self._rewrite_started = time.time()
        if journal.cap is None:
            journal.cap = journal.durable()
        journal.abandon()  # the buffer goes into the fresh journal, not this file
        started = time.monotonic()
        try:
            state.relock_dir()
            state._compact(background=False, rewrite=True)
        except (OSError, StateDirInUse) as exc:
            journal.fail(exc, "rewrite", state.path)
            return
        self.rewrites += 1
        self._rewrite = None
        journal.cap = None  # the snapshot holds everything: nothing depends on the old files
        self._event(f"rewritten from memory: snapshot {state.number} and journal "
                    f"{state.number} ({reason})")
        logger.warning("STATE_DIR %s: rewritten from memory in %.2f s (snapshot and journal "
                       "%d)", state.path, time.monotonic() - started, state.number)
        if journal.retry():  # the kept entries, carried into the fresh journal
            self.resumed()
        # else: writing still fails; the next ticks retry in the fresh journal

    def _event(self, what):
        self.events.append({"at": time.time(), "what": what})

    # ---- health --------------------------------------------------------------------------------

    def health(self):
        failure = self.state.journal.failure if self.state.journal else None
        rewriting = self._rewrite
        return {
            "status": "failing" if failure else "rewriting" if rewriting else "ok",
            "failure": None if failure is None else failure.as_dict(),
            "rewriting": rewriting,
            "last_failure": self.last_failure,
            "failures": self.failures,
            "rewrites": self.rewrites,
            "events": list(self.events),
        }

    def error(self):
        """The one-line error health shows while a fault lasts (None once it is over)."""
        failure = self.state.journal.failure if self.state.journal else None
        if failure is not None:
            return (f"cannot write {self.state.path} since {_when(failure.since)}: "
                    f"{failure.describe()}; {failure.refused} change(s) refused so far, "
                    f"claims wait")
        if self._rewrite:
            return f"rewriting the state from memory: {self._rewrite}"
        return None
