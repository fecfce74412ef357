"""The `enospc` fault of the stress harness: the server's STATE_DIR on a small tmpfs that the
harness fills and frees at random times (a real full disk, not a mock).

    setup():   mount -t tmpfs -o size=SIZE (root only) -> DIR/state is the server's STATE_DIR
    tick():    every --enospc-every s (+-50 %): a ballast file fills the tmpfs to the last byte
               -> the server refuses changes (StorageUnavailable: clients retry), claims wait
               after 0.5-3 s: the ballast is removed -> the server must resume by itself
               (health state.failure and state.error back to null: a snapshot that failed
               meanwhile written too) within RESUME_BOUND s
    check():   every fill seen by the server (state.failure) and recovered from; the clients'
               refusals counted. Lost / run twice / burned tasks are the other invariants' job
               (ledger): a refused enqueue that ran anyway is an "unknown id" in the ledger, a
               report that was dropped is an unexpected WorkerLost.
    teardown(): ballast removed, tmpfs unmounted (after the servers stopped)

Fills are not made while a server restart is in progress (a server cannot start on a full disk:
it refuses, naming the errno), and a restart waits for the ballast to go.
"""

import contextlib
import errno
import os
import random
import subprocess
import time

RESUME_BOUND = 10.0  # seconds from freeing the disk to health showing no failure
PAUSE_SLACK, REPORT_GRACE = 1.0, 2.0  # as in store/journaler.py (the TIME_LIMIT pause)
HOLD = (0.5, 3.0)    # seconds a fill lasts (below CONNECT_TIMEOUT: held replies get through)


def setup(args, workdir):
    """Mount the tmpfs; returns the mount point. Exits with a clear message without root."""
    if os.geteuid() != 0:
        raise SystemExit("stress: --faults enospc mounts a tmpfs for the STATE_DIR and needs "
                         "root (or drop enospc from --faults)")
    mount = os.path.join(workdir, "disk")
    os.makedirs(mount)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.enospc_size},mode=0700",
                           "tmpfs", mount], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"stress: cannot mount a tmpfs for --faults enospc: "
                         f"{done.stderr.strip()}")
    return mount


def teardown(mount):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(mount, "ballast"))
    if subprocess.run(["umount", mount], capture_output=True).returncode:
        subprocess.run(["umount", "-l", mount], capture_output=True)


class DiskFaults:
    def __init__(self, args, mount, monitor):
        self.args = args
        self.mount = mount
        self.monitor = monitor
        self.rng = random.Random(args.seed + 2)
        self.fills = []  # {"t", "bytes", "freed_at", "failure_seen", "resumed_s"}
        self.next_fill = time.monotonic() + self._gap()
        self.free_at = None
        self._freed_mono = None

    def _gap(self):
        return self.args.enospc_every * self.rng.uniform(0.5, 1.5)

    @property
    def full(self):
        """Full, or freed but the server not seen resuming yet (no restart meanwhile)."""
        return self.free_at is not None or (
            bool(self.fills) and self.fills[-1]["resumed_s"] is None)

    def tick(self, restarting):
        now = time.monotonic()
        self._observe()
        if self.free_at is not None:
            if now >= self.free_at:
                self.free()
            return
        if self.full:
            return  # freed, the server not seen resuming yet
        if not restarting and now >= self.next_fill:
            self.fill()

    def fill(self):
        path = os.path.join(self.mount, "ballast")
        written = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 1 << 16, 4096, 1):
                chunk = b"\0" * size
                try:
                    while True:
                        written += os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
        finally:
            os.close(fd)
        self.fills.append({"t": time.time(), "bytes": written, "freed_at": None,
                           "failure_seen": False, "resumed_s": None})
        self._freed_mono = None
        self.free_at = time.monotonic() + self.rng.uniform(*HOLD)

    def free(self):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.mount, "ballast"))
        self.fills[-1]["freed_at"] = time.time()
        self._freed_mono = time.monotonic()
        self.free_at = None
        self.next_fill = time.monotonic() + self._gap()

    def _observe(self):
        """What health says of the last fill: the failure seen, then the recovery."""
        if not self.fills:
            return
        with self.monitor.lock:
            health, sampled_at = self.monitor.latest, self.monitor.latest_at
        state = (health or {}).get("state") or {}
        last = self.fills[-1]
        if state.get("failure"):
            last["failure_seen"] = True
        elif state.get("error"):
            pass  # e.g. a compaction's snapshot failed on the full disk: not over until retried
        elif self._freed_mono is not None and last["resumed_s"] is None and \
                health is not None and sampled_at > self._freed_mono:  # sampled after the free
            last["resumed_s"] = round(time.time() - last["freed_at"], 3)

    def finish(self, timeout=RESUME_BOUND + 5):
        """Free the disk if it is full and wait for the server to say it resumed."""
        if self.free_at is not None:
            self.free()
        deadline = time.monotonic() + timeout
        while self.fills and self.fills[-1]["resumed_s"] is None and \
                time.monotonic() < deadline:
            self.monitor.sample()
            self._observe()
            time.sleep(0.1)

    def report(self):
        return [dict(f) for f in self.fills]


def time_allowance(fills, info):
    """Seconds a task may run past TIME_LIMIT + slack because a fill paused the server's
    TIME_LIMIT clock while it ran (store/journaler.py: the pause, from PAUSE_SLACK before the
    failure, is not counted, and nothing is judged for REPORT_GRACE after it)."""
    started = info.get("started_at")
    if started is None:
        return 0.0
    end = started + info.get("ran_max", 0.0)
    allowance = 0.0
    for f in fills:
        if f["freed_at"] is None:
            continue
        resumed = f["freed_at"] + (f["resumed_s"] if f["resumed_s"] is not None
                                   else RESUME_BOUND)
        if started < resumed and end > f["t"] - PAUSE_SLACK:
            allowance += resumed - f["t"] + PAUSE_SLACK + REPORT_GRACE
    return allowance


def check(fills, enqueue_errors, final_health):
    """(ok, detail, failures, figures) of the disk-full invariant."""
    bad = []
    if not fills:
        bad.append("no fill happened (the run was shorter than --enospc-every?)")
    for f in fills:
        if f["resumed_s"] is None:
            bad.append(f"the fill at {f['t']:.3f} (freed at {f['freed_at']}) was not followed "
                       f"by a recovery in health")
        elif f["resumed_s"] > RESUME_BOUND:
            bad.append(f"the server resumed {f['resumed_s']:.1f} s after the fill at "
                       f"{f['t']:.3f} was freed (bound {RESUME_BOUND:g} s)")
    state = (final_health or {}).get("state") or {}
    if state.get("failure"):
        bad.append(f"the last server still reports a storage failure: {state['failure']}")
    refused = sum("cannot write its STATE_DIR" in e for e in enqueue_errors)
    seen = sum(f["failure_seen"] for f in fills)
    resumed = [f["resumed_s"] for f in fills if f["resumed_s"] is not None]
    held = [round(f["freed_at"] - f["t"], 2) for f in fills if f["freed_at"]]
    figures = {"fills": len(fills), "fills_seen_by_server": seen,
               "seconds_full": round(sum(held), 1), "enqueues_refused": refused,
               "resume_seconds_max": max(resumed, default=None),
               "resume_seconds": resumed}
    detail = (f"{len(fills)} fill(s) of the tmpfs ({seen} seen in health as a failure), "
              f"{figures['seconds_full']} s full in all; {refused} enqueue(s) refused with "
              f"StorageUnavailable (retried by the clients); resumed "
              f"{max(resumed, default=0):.2f} s at most after the space came back")
    return not bad, detail, bad, figures
