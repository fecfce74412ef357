"""Storage faults under a real `tasks_server` with real workers, checked against a ledger:
a full disk (STATE_DIR on a 2 MiB tmpfs, filled by a ballast file and freed), state files and
the directory removed or truncated under the live server, the lock file removed with a second
server started on the same directory. After each: SIGKILL and a restart lose nothing that was
acknowledged, and nothing runs twice.

Mounting a tmpfs needs root (CI runs as root): without it the tmpfs test is skipped, saying
why; with CI=true it fails instead, so CI can never skip it silently.
"""

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import subprocess
import threading
import time

import psutil
import pytest

from django_tasks_shared.exceptions import StorageUnavailable
from django_tasks_shared.health.status import DEGRADED, HEALTHY, evaluate
from django_tasks_shared.protocol.records import new_record
from helpers import ServerProcess, temp_dir, wait_until

TASK = "testproject.durable_tasks.record"


def skip_or_fail(reason):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: this test must run)")
    pytest.skip(reason)


@contextlib.contextmanager
def tmpfs(size="2m"):
    """A size-limited tmpfs, unmounted afterwards (also when the test fails)."""
    if os.geteuid() != 0:
        skip_or_fail("mounting a tmpfs needs root")
    directory = temp_dir("dts-tmpfs-")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           directory], capture_output=True, text=True)
    if done.returncode:
        skip_or_fail(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", directory], capture_output=True).returncode:
            subprocess.run(["umount", "-l", directory], capture_output=True)


def fill(directory):
    """Write a ballast file until the file system is full; returns its path."""
    path = os.path.join(directory, "ballast")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        with open(os.path.join(directory, "probe"), "wb") as f:
            f.write(b"\0" * 8192)
            f.flush()
    assert info.value.errno == errno.ENOSPC
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, "probe"))
    return path


def ledger_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().split()


def record(ledger, tag, seconds=0.0, run_after=None):
    return new_record(id=secrets.token_hex(16), task=TASK, args=[ledger, tag, seconds],
                      kwargs={}, run_after=run_after)


def kill_server_and_orphans(srv):
    """SIGKILL the server (a crash); its workers exit on their own: wait for them by pid."""
    pids = [w["pid"] for w in srv.client().call("health")["workers"]]
    srv.popen.kill()
    srv.popen.wait(10)
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        proc.kill()


def health(srv):
    return srv.client().call("health")


class Enqueuers:
    """Client threads enqueueing tagged tasks at a steady pace, each outcome noted:
    acknowledged (id), refused with StorageUnavailable (id), anything else."""

    def __init__(self, srv, ledger, threads=2, seconds=0.02, pace=0.02):
        self.srv, self.ledger, self.seconds, self.pace = srv, ledger, seconds, pace
        self.acked, self.refused, self.other = {}, {}, []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(threads)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _run(self, n):
        client = self.srv.client()
        i = 0
        while not self.stop.is_set():
            tag = f"c{n}-{i}"
            i += 1
            rec = record(self.ledger, tag, self.seconds)
            try:
                client.call("enqueue", rec)
            except StorageUnavailable as exc:
                self.refused[tag] = (rec["id"], str(exc))
                time.sleep(0.01)
                continue
            except Exception as exc:  # noqa: BLE001 - noted, and the test fails on it
                self.other.append((tag, repr(exc)))
                return
            self.acked[tag] = rec["id"]
            time.sleep(self.pace)  # about as fast as the workers: the tmpfs fills by the ballast


@pytest.mark.timeout(120)
def test_a_full_disk_refuses_changes_loses_nothing_acknowledged_and_resumes_by_itself():
    ledger = os.path.join(temp_dir(), "ledger")
    with tmpfs("2m") as mount:
        state_dir = os.path.join(mount, "state")
        options = {"WORKERS": 2, "STATE_DIR": state_dir, "FSYNC": "everysec",
                   "MAX_RESULTS": 100_000, "CONNECT_TIMEOUT": 30}
        srv = ServerProcess(options=options)
        again = None
        try:
            srv.wait_ready()
            with Enqueuers(srv, ledger, threads=4) as clients:  # (a held one waits: others go on)
                wait_until(lambda: len(clients.acked) >= 100, 20, message="100 enqueues")
                # the workers at work when the disk fills: their reports come while it is full
                wait_until(lambda: health(srv)["counters"]["succeeded"] >= 20, 30,
                           message="workers at work")
                ballast = fill(mount)
                failing = wait_until(
                    lambda: (h := health(srv))["state"]["failure"] and h, 20,
                    message="health to report the full disk")
                wait_until(lambda: len(clients.refused) >= 20, 20, message="refused enqueues")
                reader, some = srv.client(), next(iter(clients.acked.values()))
                t0 = time.monotonic()
                for _ in range(20):  # reads are served while the disk is full, never held
                    assert reader.call("get", some)["id"] == some
                    reader.call("overview")
                read_seconds = time.monotonic() - t0
                during = health(srv)
                status, reasons = evaluate(during)
                os.unlink(ballast)
                freed_at = time.monotonic()
                wait_until(lambda: health(srv)["state"]["failure"] is None, 10,
                           message="the server to resume by itself")
                resumed_in = time.monotonic() - freed_at
                acked_before = len(clients.acked)
                wait_until(lambda: len(clients.acked) >= acked_before + 100, 20,
                           message="enqueues acknowledged again after the recovery")
            assert clients.other == []
            failure = failing["state"]["failure"]
            assert failure["errno"] == "ENOSPC" and failure["since"] > 0
            assert status == DEGRADED and any(state_dir in r and "ENOSPC" in r for r in reasons)
            assert during["state"]["failure"]["refused"] >= 20
            tag, (_, text) = next(iter(clients.refused.items()))
            assert state_dir in text and "ENOSPC" in text and "nothing was stored" in text
            assert resumed_in < 5, resumed_in  # the guard retries every second
            assert read_seconds < 2, read_seconds  # 40 reads; held ones would take seconds
            after = health(srv)
            assert after["state"]["error"] is None and evaluate(after)[0] == HEALTHY
            assert after["state"]["last_failure"]["errno"] == "ENOSPC"

            client = srv.client()
            # every acknowledged task runs, exactly once, and none ended WorkerLost for the disk
            for tag, task_id in clients.acked.items():
                done = client.call("wait", task_id, 30)
                assert done is not None and done["status"] == "SUCCESSFUL", (tag, done)
            lines = ledger_lines(ledger)
            assert len(lines) == len(set(lines)), "a task ran twice"
            assert set(lines) == set(clients.acked), "ran: acknowledged, and only those"
            for tag, (task_id, _) in clients.refused.items():
                assert client.call("get", task_id) is None, tag  # nothing kept for a refusal

            kill_server_and_orphans(srv)
            again = ServerProcess(address=srv.address, options=options).wait_ready()
            client = again.client()
            for tag, task_id in clients.acked.items():
                got = client.call("get", task_id)
                assert got is not None and got["status"] == "SUCCESSFUL", (tag, got)
            for tag, (task_id, _) in clients.refused.items():
                assert client.call("get", task_id) is None, tag
            assert ledger_lines(ledger) == lines  # nothing ran again after the restart
        finally:
            srv.stop()
            if again is not None:
                again.stop()


def _rm_journal(state_dir):
    for name in os.listdir(state_dir):
        if name.startswith("journal-"):
            os.unlink(os.path.join(state_dir, name))


def _rm_snapshot(state_dir):
    for name in os.listdir(state_dir):
        if name.startswith("snapshot-"):
            os.unlink(os.path.join(state_dir, name))


def _truncate_journal(state_dir):
    for name in os.listdir(state_dir):
        if name.startswith("journal-"):
            path = os.path.join(state_dir, name)
            os.truncate(path, os.path.getsize(path) // 2)


def _rm_dir(state_dir):
    shutil.rmtree(state_dir)  # rm -rf: the files, and starts/ (the workers' start tables)


def _rm_lock(state_dir):
    os.unlink(os.path.join(state_dir, "lock"))


FILE_FAULTS = [
    ("journal removed", _rm_journal, "journal-"),
    ("snapshot removed", _rm_snapshot, "snapshot-"),
    ("journal truncated", _truncate_journal, "truncated"),
    ("directory removed", _rm_dir, "directory"),
    ("lock removed", _rm_lock, "lock was removed"),
]


@pytest.mark.timeout(150)
def test_state_files_removed_or_truncated_under_a_live_server_are_rewritten_from_memory():
    """Each fault in turn on one STATE_DIR: acknowledged tasks before it and after it are all
    known after a SIGKILL and a restart (pending ones: far-future run_after, so they stay)."""
    state_dir = os.path.join(temp_dir(), "state")
    ledger = os.path.join(temp_dir(), "ledger")
    options = {"WORKERS": 1, "STATE_DIR": state_dir, "MAX_RESULTS": 100_000}
    later = time.time() + 3600
    acked = []
    srv = ServerProcess(options=options).wait_ready()
    try:
        for name, fault, word in FILE_FAULTS:
            client = srv.client()
            batch = [record(ledger, "x", run_after=later) for _ in range(20)]
            for rec in batch:
                client.call("enqueue", rec)
            events_before = len(health(srv)["state"]["events"])
            fault(state_dir)
            faulted_at = time.monotonic()

            def rewritten(srv=srv, events_before=events_before, word=word):
                state = health(srv)["state"]
                events = state["events"][events_before:]
                return any(word in e["what"] for e in events) and \
                    (word == "lock was removed" or state["rewrites"] and
                     any("rewritten from memory" in e["what"] for e in events)) and \
                    state["status"] == "ok" and state
            state = wait_until(rewritten, 10, message=f"{name}: noticed and rewritten")
            noticed_in = time.monotonic() - faulted_at
            assert noticed_in < 5, (name, noticed_in)
            assert state["error"] is None, (name, state)
            more = [record(ledger, "x", run_after=later) for _ in range(20)]
            for rec in more:
                client.call("enqueue", rec)
            acked.extend(r["id"] for r in batch + more)
            kill_server_and_orphans(srv)
            srv = ServerProcess(address=srv.address, options=options).wait_ready()
            client = srv.client()
            missing = [i for i in acked if client.call("get", i) is None]
            assert missing == [], f"{name}: {len(missing)} acknowledged task(s) lost"
            assert health(srv)["state"]["restored"]["pending"] == len(acked), name
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_two_servers_on_one_state_dir_are_impossible_even_without_the_lock_file():
    state_dir = os.path.join(temp_dir(), "state")
    options = {"WORKERS": 1, "STATE_DIR": state_dir}
    first = ServerProcess(options=options).wait_ready()
    second = None
    try:
        os.unlink(os.path.join(state_dir, "lock"))
        second = ServerProcess(options=options)  # another address, the same directory
        assert second.popen.wait(30) == 1
        out = second.popen.stdout.read()
        assert "is in use by another task server" in out and state_dir in out, out
        # the first one locks a lock file again (so a 0.1.0 server, which knows only that
        # file, is excluded too) and says so in health. (The second one may have created the
        # file before it found the directory locked: then it was "replaced", not "removed".)
        wait_until(lambda: any("lock was" in e["what"] and "locked" in e["what"]
                               for e in health(first)["state"]["events"]), 5,
                   message="the lock file locked again")
        fd = os.open(os.path.join(state_dir, "lock"), os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        third = ServerProcess(options=options)
        assert third.popen.wait(30) == 1
        assert "in use by another task server (pid" in third.popen.stdout.read()
    finally:
        first.stop()
        if second is not None:
            second.stop()


@pytest.mark.timeout(60)
def test_a_compaction_on_a_full_disk_keeps_the_journals_and_is_tried_again():
    """The journal passes JOURNAL_LIMIT while the disk is full: the compaction fails (its new
    journal or its snapshot cannot be written), nothing is lost, health says so, and it is done
    once there is room again; then a crash restores everything."""
    from django_tasks_shared.durable import guard as guard_module
    from django_tasks_shared.durable.statedir import StateDir
    from django_tasks_shared.store import TaskStore

    with tmpfs("1m") as mount:
        directory = os.path.join(mount, "state")
        store = TaskStore(max_results=10_000)
        state = StateDir(directory, "never", journal_limit=4096)
        state.lock()
        state.open(store, {"pid": 7, "version": "test"})
        state._stop.set()  # this test ticks the guard itself
        retry = guard_module.SNAPSHOT_RETRY_MIN, guard_module.SNAPSHOT_RETRY_MAX
        guard_module.SNAPSHOT_RETRY_MIN = guard_module.SNAPSHOT_RETRY_MAX = 0.0
        try:
            wait_until(lambda: not state._snapshotting.locked(), 10, message="first snapshot")
            ids = []
            for i in range(60):
                ids.append(f"t{i}")
                store.enqueue(new_record(id=ids[-1], task=TASK, args=["x" * 100], kwargs={}))
            assert store.commit() and state.journal.bytes > 4096
            ballast = fill(mount)
            for _ in range(3):  # the compaction fails each time; the journal still writes
                state.guard.tick()
                wait_until(lambda: not state._snapshotting.locked(), 10, message="snapshot")
            error = state.health()["error"]
            assert error and "No space left" in error, error
            os.unlink(ballast)
            state.guard.tick()
            wait_until(lambda: not state._snapshotting.locked(), 10, message="snapshot")
            assert state.health()["error"] is None
            assert len([n for n in os.listdir(directory) if n.startswith("journal-")]) == 1
            store.enqueue(new_record(id="last", task=TASK, args=[], kwargs={}))
            assert store.commit()
            os.close(state.journal._fd)  # a crash: nothing more is written
            os.close(state._lock_fd)
            os.close(state._dir_fd)
            state.journal._fd = state._lock_fd = state._dir_fd = None
            again, state2 = TaskStore(max_results=10_000), StateDir(directory, "never")
            state2.lock()
            state2.open(again, {"pid": 8, "version": "test"})
            assert set(again.records) == {*ids, "last"}
            state2.close()
        finally:
            guard_module.SNAPSHOT_RETRY_MIN, guard_module.SNAPSHOT_RETRY_MAX = retry
            state.release()
