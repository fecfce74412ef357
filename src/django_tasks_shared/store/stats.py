"""Small, bounded statistics the server keeps for the web page and the metrics endpoint.

    TaskStore: a task starts / ends ── O(1) ──> Stats.waits / durations: Histogram.observe
    Supervisor tick (~1/s) ── store.sample_history() ──> History.sample(now, finished, workers)
                                                         ├─ rate ring: tasks finished per second
                                                         └─ per-worker ring: (t, RSS, CPU %)
    health() / overview() ──> snapshot(): plain lists (JSON-compatible)

Memory is fixed: RATE_POINTS samples of the finished counter (10 minutes at one a second) and
WORKER_POINTS samples per live worker; a worker's ring goes when the worker does. Nothing here
locks: the TaskStore calls it with its own lock held. Pure Python, unit-tested directly.
"""

from bisect import bisect_left
from collections import deque

RATE_POINTS = 600       # one a second: the last 10 minutes
WORKER_POINTS = 180     # one a second: the last 3 minutes
SAMPLE_EVERY = 1.0      # seconds between samples (the supervisor ticks faster)

# Bucket upper bounds in seconds (Prometheus `le`), from a fast task to a slow batch job.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0)
WAIT_BUCKETS = DURATION_BUCKETS


class Histogram:
    """Cumulative-on-read bucket counts, as Prometheus wants them; observe() is O(log buckets)."""

    def __init__(self, bounds):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value):
        value = max(0.0, value)
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self):
        """{"buckets": [[le, cumulative count], ..., ["+Inf", total]], "sum", "count"}."""
        buckets, running = [], 0
        for bound, count in zip(self.bounds + ("+Inf",), self.counts, strict=True):
            running += count
            buckets.append([bound, running])
        return {"buckets": buckets, "sum": round(self.sum, 6), "count": running}


class History:
    """Rings of recent samples: finished tasks per second, and RSS/CPU per worker."""

    def __init__(self, rate_points=RATE_POINTS, worker_points=WORKER_POINTS, every=SAMPLE_EVERY):
        self.every = every
        # (t, tasks finished per second since the last sample)
        self.rate: deque[tuple[float, float]] = deque(maxlen=rate_points)
        self.workers: dict[str, deque] = {}        # worker id -> deque of (t, rss, cpu)
        self.worker_points = worker_points
        self._last = None                          # (t, finished counter) of the last sample

    def sample(self, now, finished_total, workers):
        """Record one sample if `every` seconds passed; `workers` maps id -> (rss, cpu)."""
        if self._last is not None and now - self._last[0] < self.every:
            return False
        if self._last is not None:
            then, before = self._last
            self.rate.append((round(now, 3), round((finished_total - before) / (now - then), 3)))
        self._last = (now, finished_total)
        for worker_id in list(self.workers):
            if worker_id not in workers:
                del self.workers[worker_id]       # gone: its ring goes with it
        for worker_id, (rss, cpu) in workers.items():
            ring = self.workers.get(worker_id)
            if ring is None:
                ring = self.workers[worker_id] = deque(maxlen=self.worker_points)
            ring.append((round(now, 3), rss, cpu))
        return True

    def snapshot(self):
        return {"every": self.every,
                "rate": [list(point) for point in self.rate],
                "workers": {wid: [list(point) for point in ring]
                            for wid, ring in self.workers.items()}}


class Stats:
    """The store's statistics: queue-wait and duration histograms, and the history rings."""

    def __init__(self):
        self.durations = Histogram(DURATION_BUCKETS)
        self.waits = Histogram(WAIT_BUCKETS)
        self.history = History()

    def started(self, record, now):
        """A task started: how long it waited since it was due."""
        self.waits.observe(now - max(record["enqueued_at"], record["run_after"] or 0))

    def finished(self, record):
        """A task ended: how long its last attempt ran (a retried task's earlier attempts and
        back-off waits are not its duration)."""
        if record["last_attempted_at"] is not None:
            self.durations.observe(record["finished_at"] - record["last_attempted_at"])

    def histograms(self):
        return {"task_duration_seconds": self.durations.snapshot(),
                "queue_wait_seconds": self.waits.snapshot()}
