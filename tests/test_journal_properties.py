"""Properties of the journal and the store under storage faults (Hypothesis).

Faults are injected at the Journal's system-call seam (`_os_write`, `_os_fsync`): a write that
fails (ENOSPC) or writes a prefix and then fails, an fsync that fails (EIO). The real-fault
tests (a full tmpfs, files removed under a live server) are in test_storage_faults.py.

1. The journal alone: whatever fails, the file never holds a damaged entry in the middle, and
   its entries are always the first ones appended, in order, each once; after the disk
   recovers, all of them.
2. The store: any sequence of enqueues, claims, reports, write and fsync failures, partial
   writes and recoveries (the guard's tick), then a crash (SIGKILL: the buffer is lost) that
   cuts the journal at any byte offset past what was synced: the restart knows every change
   that was acknowledged (its reply would have gone out), none that was refused, and nothing
   that was never asked for.
"""

import errno
import os
import shutil
import tempfile
import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_tasks_shared.durable import format as fmt
from django_tasks_shared.durable import statedir as statedir_module
from django_tasks_shared.durable.journal import Journal
from django_tasks_shared.durable.statedir import StateDir
from django_tasks_shared.exceptions import StorageUnavailable
from django_tasks_shared.protocol.records import new_record
from django_tasks_shared.protocol.status import FAILED, READY, SUCCESSFUL
from django_tasks_shared.store import TaskStore
from django_tasks_shared.store.longpoll import NOTHING

BASE = "/dev/shm" if os.path.isdir("/dev/shm") else None  # fsync costs nothing on a tmpfs
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


class Faults:
    """Replaces a Journal's os.write / os.fsync: the next `writes` writes fail (the first one
    after writing `prefix` bytes, when given), the next `fsyncs` fsyncs fail."""

    def __init__(self, journal):
        self.writes = self.fsyncs = 0
        self.prefix = None
        journal._os_write, journal._os_fsync = self.write, self.fsync

    def write(self, fd, data):
        if self.writes:
            self.writes -= 1
            if self.prefix:
                n, self.prefix = min(self.prefix, len(data) - 1), None
                if n > 0:
                    return os.write(fd, bytes(data[:n]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)

    def fsync(self, fd):
        if self.fsyncs:
            self.fsyncs -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return os.fsync(fd)

    def heal(self):
        self.writes = self.fsyncs = 0
        self.prefix = None


journal_ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 300)),
    st.tuples(st.just("fail"), st.integers(1, 3), st.integers(0, 400)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("retry")),
), max_size=40)


@SETTINGS
@given(journal_ops)
def test_the_journal_file_is_always_a_whole_ordered_prefix(ops):
    directory = tempfile.mkdtemp(prefix="dts-prop-", dir=BASE)
    path = os.path.join(directory, "journal-00000001.log")
    fd, size = Journal.create(path, {"pid": 1})
    journal = Journal(fd, path, size, "never")
    faults = Faults(journal)
    appended = []
    try:
        for op in ops:
            if op[0] == "append":
                entry = ["p", {"id": str(len(appended)), "pad": "x" * op[1]}]
                journal.append(entry)
                appended.append(entry)
            elif op[0] == "fail":
                faults.writes, faults.prefix = op[1], op[2]
            elif op[0] == "commit":
                journal.commit()
            else:
                faults.heal()
                journal.retry()
            with open(path, "rb") as f:
                entries, torn = fmt.decode_entries(f.read(), fmt.KIND_JOURNAL, path)
            assert torn is None  # cut back: never half an entry, not even at the end
            assert entries[1:] == appended[:len(entries) - 1]
            assert journal.durable() <= journal.appended
        faults.heal()
        assert journal.retry() or not appended
        with open(path, "rb") as f:
            entries, torn = fmt.decode_entries(f.read(), fmt.KIND_JOURNAL, path)
        assert torn is None and entries[1:] == appended  # all of them, once, in order
    finally:
        journal.close()
        shutil.rmtree(directory)


store_ops = st.lists(st.one_of(
    st.tuples(st.just("enqueue")),
    st.tuples(st.just("enqueue_again")),
    st.tuples(st.just("claim")),
    st.tuples(st.just("report")),
    st.tuples(st.just("fail_writes"), st.integers(1, 4), st.integers(0, 600)),
    st.tuples(st.just("fail_fsync")),
    st.tuples(st.just("recover")),
), max_size=30)


class Model:
    """What a client was told: acknowledged changes (their reply went out), held ones (the
    reply waits for the journal), refused ones (StorageUnavailable)."""

    def __init__(self, store):
        self.store = store
        self.enqueued = {}       # id -> acknowledged?
        self.finished = set()    # ids whose report was acknowledged
        self.held = []           # (position, kind, id): replies not sent yet
        self.refused = set()

    def reply(self, kind, task_id):
        """The store call returned: its reply goes out once the journal is durable there."""
        need = self.store.journal.take_need()
        self.store.commit()
        self.held.append((need, kind, task_id))
        self.release()

    def release(self):
        durable = self.store.journal.durable_position()
        for item in [h for h in self.held if h[0] <= durable]:
            self.held.remove(item)
            if item[1] == "enqueue":
                self.enqueued[item[2]] = True
            else:
                self.finished.add(item[2])


def open_state(directory, fsync):
    store = TaskStore(max_results=10_000)
    state = StateDir(directory, fsync)
    state.lock()
    state.open(store, {"pid": 7, "version": "test"})
    if state._snapshot_thread is not None:
        state._snapshot_thread.join(10)
    store.register_worker("w", pid=1)
    store.journal.owner = threading.get_ident()  # this thread plays the event loop
    return store, state


def crash(state, cut):
    """SIGKILL: what was written stays, the buffer is gone, the locks go; then the current
    journal is cut at a fraction `cut` of what lies past its synced bytes."""
    journal = state.journal
    state._stop.set()
    if state._snapshot_thread is not None:
        state._snapshot_thread.join(10)
    unsynced = journal._written - (journal._synced if journal.fsync == "always"
                                   else journal._written)
    size = os.fstat(journal._fd).st_size
    floor = max(size - unsynced, len(fmt.header(fmt.KIND_JOURNAL)))
    os.truncate(journal.path, floor + int((size - floor) * cut))
    for fd in (journal._fd, state._lock_fd, state._dir_fd):
        os.close(fd)
    journal._fd = state._lock_fd = state._dir_fd = None


@SETTINGS
@given(store_ops, st.sampled_from(["always", "never"]), st.floats(0, 1))
def test_a_restart_restores_exactly_what_was_acknowledged(ops, fsync, cut):
    directory = tempfile.mkdtemp(prefix="dts-prop-", dir=BASE)
    every, statedir_module.FLUSH_EVERY = statedir_module.FLUSH_EVERY, 3600.0  # ticks: ours
    try:
        _run_and_check(directory, ops, fsync, cut)
    finally:
        statedir_module.FLUSH_EVERY = every
        shutil.rmtree(directory)


def _run_and_check(directory, ops, fsync, cut):
    store, state = open_state(directory, fsync)
    faults = Faults(state.journal)
    model = Model(store)
    in_hand = None       # the task the worker runs
    report = None        # its outcome, until the server takes it (resent after a refusal)
    counter = 0
    for op in ops:
        kind = op[0]
        if kind == "enqueue" or (kind == "enqueue_again" and model.enqueued):
            if kind == "enqueue":
                task_id, counter = f"t{counter}", counter + 1
            else:  # a client that got no answer sends the same enqueue again
                task_id = sorted(model.enqueued)[counter % len(model.enqueued)]
            record = new_record(id=task_id, task="x.y", args=[], kwargs={})
            failing = store.journal.failing
            try:
                store.enqueue(record)
                assert not failing or task_id in model.enqueued, "a change taken while failing"
            except StorageUnavailable:
                assert store.get(task_id) is None or task_id in model.enqueued
                if task_id not in model.enqueued:
                    model.refused.add(task_id)
                continue
            model.refused.discard(task_id)
            model.enqueued.setdefault(task_id, False)
            model.reply("enqueue", task_id)
        elif kind == "claim" and in_hand is None:
            failing = store.journal.failing
            got = store.polls.claim_now("w", None)
            if failing:
                assert got is NOTHING  # claims wait: nothing is handed out
            elif got is not NOTHING:
                in_hand = got["id"]
                report = {"id": in_hand, "status": SUCCESSFUL, "return_value": 1}
            store.journal.take_need()
            store.commit()
        elif kind == "report" and report is not None:
            failing = store.journal.failing
            try:
                store.polls.claim_now("w", report)
                assert not failing, "a report applied while failing"
            except StorageUnavailable:
                assert store.records[in_hand]["status"] != SUCCESSFUL  # not applied
                continue
            model.reply("finish", in_hand)
            in_hand = report = None
        elif kind == "fail_writes":
            faults.writes, faults.prefix = op[1], op[2]
        elif kind == "fail_fsync":
            faults.fsyncs = 1
        elif kind == "recover":
            faults.heal()
            state.guard.tick()
            faults = Faults(state.journal)  # (the same Journal object: switched, not replaced)
            model.release()
    crash(state, cut)

    store2, state2 = open_state(directory, "never")
    try:
        restored = set(store2.records)
        acked = {i for i, ok in model.enqueued.items() if ok}
        maybe = {h[2] for h in model.held if h[1] == "enqueue"}
        assert acked <= restored, f"lost: {sorted(acked - restored)}"
        assert not (model.refused & restored), "a refused enqueue was kept"
        assert restored <= acked | maybe, "restored what nobody enqueued"
        for task_id in model.finished:
            assert store2.records[task_id]["status"] == SUCCESSFUL, task_id
        for task_id in restored - model.finished:
            assert store2.records[task_id]["status"] in (READY, FAILED, SUCCESSFUL)
    finally:
        state2.close()


def test_time_limit_does_not_count_the_time_the_journal_could_not_be_written():
    """A task whose report is refused (or whose claim reply is held) while the disk is full is
    not judged past TIME_LIMIT for that time, nor for REPORT_GRACE after it."""
    directory = tempfile.mkdtemp(prefix="dts-prop-", dir=BASE)
    every, statedir_module.FLUSH_EVERY = statedir_module.FLUSH_EVERY, 3600.0
    now = [time.time()]  # the store's clock, moved by hand (a failure's `since` is real time)
    store = TaskStore(clock=lambda: now[0])
    state = StateDir(directory, "never")
    try:
        state.lock()
        state.open(store, {"pid": 7, "version": "test"})
        store.register_worker("w", pid=1)
        store.enqueue(new_record(id="a", task="x.y", args=[], kwargs={}))
        assert store.polls.claim_now("w", None)["id"] == "a"
        store.commit()
        faults = Faults(state.journal)
        faults.writes = 1
        store.enqueue(new_record(id="b", task="x.y", args=[], kwargs={}))
        assert not store.commit() and store.journal.failing
        now[0] += 30.0  # the disk stays full: nobody is judged meanwhile
        assert store.overdue(5.0) == []
        faults.heal()
        state.guard.tick()  # writing works again
        assert not store.journal.failing
        now[0] += 1.0  # within REPORT_GRACE: reports on their way again
        assert store.overdue(5.0) == []
        now[0] += 2.0  # 33 s after it started, 30 of them the pause: ran about 3 s
        assert store.overdue(5.0) == []
        now[0] += 2.5
        ((worker, task_id, ran),) = store.overdue(5.0)
        assert (worker, task_id) == ("w", "a") and 5.0 < ran < 7.0
    finally:
        statedir_module.FLUSH_EVERY = every
        state.close()
        shutil.rmtree(directory)
