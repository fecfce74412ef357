"""The Prometheus text exposition of one `health` snapshot (optional extra `[metrics]`).

    health snapshot (one round trip) -> HealthCollector.collect() -> metric families
                                     -> prometheus_client.generate_latest -> text/plain

The histograms' bucket counts are kept in the server (store/stats.py), so every web process
scraped reports the same figures. An unreachable server gives `django_tasks_shared_up 0` and
nothing else, so an alert can tell "server down" from "scrape failed".
"""

PREFIX = "django_tasks_shared"
STATUSES = ("enqueued", "succeeded", "failed", "worker_lost", "timed_out", "cancelled")
INSTALL_HINT = ("prometheus-client is not installed: install the metrics extra, "
                "`pip install 'django-tasks-shared[metrics]'`.")


def available():
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def _families(snapshot):
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    up = GaugeMetricFamily(f"{PREFIX}_up", "1 if the task server answered this scrape")
    up.add_metric([], 0 if snapshot is None else 1)
    yield up
    if snapshot is None:
        return
    counters = snapshot.get("counters") or {}
    tasks = CounterMetricFamily(
        f"{PREFIX}_tasks", "Tasks by outcome since the server started ('failed' includes "
        "worker_lost, timed_out and cancelled)", labels=["status"])
    for status in STATUSES:
        tasks.add_metric([status], counters.get(status, 0))
    yield tasks
    pending = GaugeMetricFamily(f"{PREFIX}_pending", "Tasks waiting (ready + deferred)",
                                labels=["queue"])
    for queue, counts in (snapshot.get("queues") or {}).items():
        pending.add_metric([queue], counts["ready"] + counts["deferred"])
    yield pending
    yield GaugeMetricFamily(f"{PREFIX}_running", "Tasks running now",
                            value=snapshot.get("running") or 0)
    workers = snapshot.get("workers") or []
    yield GaugeMetricFamily(f"{PREFIX}_workers", "Live worker processes", value=len(workers))
    rss = GaugeMetricFamily(f"{PREFIX}_worker_rss_bytes",
                            "Resident memory of a worker process and its children",
                            labels=["worker"])
    for worker in workers:
        if worker.get("rss_bytes") is not None:
            rss.add_metric([worker["id"]], worker["rss_bytes"])
    yield rss
    pools = ((snapshot.get("server") or {}).get("supervisor") or {}).get("pools") or []
    if pools:  # OPTIONS["POOLS"] (one pool named "default" without it)
        alive = GaugeMetricFamily(f"{PREFIX}_pool_workers", "Live worker processes of a pool",
                                  labels=["pool"])
        expected = GaugeMetricFamily(f"{PREFIX}_pool_workers_expected",
                                     "Worker processes a pool is configured to run",
                                     labels=["pool"])
        for pool in pools:
            alive.add_metric([pool["name"]], pool.get("workers_alive") or 0)
            expected.add_metric([pool["name"]], pool.get("workers_expected") or 0)
        yield alive
        yield expected
    flows = snapshot.get("workflows")
    if flows is not None:
        yield GaugeMetricFamily(f"{PREFIX}_unique_keys_held",
                                "Unique keys held by a pending or running task",
                                value=(flows.get("unique") or {}).get("held") or 0)
        yield GaugeMetricFamily(f"{PREFIX}_waiting_on_dependencies",
                                "Tasks waiting for the tasks they were enqueued after()",
                                value=flows.get("waiting_on_dependencies") or 0)
    connections = (snapshot.get("server") or {}).get("connections")
    if connections is not None:
        yield GaugeMetricFamily(f"{PREFIX}_connections",
                                "Client connections the task server holds (all processes)",
                                value=connections)
    yield GaugeMetricFamily(f"{PREFIX}_results_stored", "Finished results held by the server",
                            value=(snapshot.get("results") or {}).get("stored") or 0)
    histograms = snapshot.get("histograms") or {}
    for name, text in (("task_duration_seconds", "Time from start to finish of a task"),
                       ("queue_wait_seconds", "Time a task waited from due to started")):
        data = histograms.get(name)
        if data is None:
            continue
        buckets = [("+Inf" if le == "+Inf" else repr(float(le)), count)
                   for le, count in data["buckets"]]
        yield HistogramMetricFamily(f"{PREFIX}_{name}", text, buckets=buckets,
                                    sum_value=data["sum"])


class HealthCollector:
    def __init__(self, snapshot):
        self.snapshot = snapshot

    def collect(self):
        yield from _families(self.snapshot)


def render(snapshot):
    """(body bytes, content type) for a health snapshot, or None for an unreachable server."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(HealthCollector(snapshot))
    return generate_latest(registry), CONTENT_TYPE_LATEST
