"""The data behind the page and the metrics, tested directly: histograms, history rings, the
results listing, the presentation helpers and the Prometheus text (parsed with its parser)."""

import sys
import time
from collections import deque

import pytest
from prometheus_client.parser import text_string_to_metric_families

from django_tasks_shared.store.stats import Histogram, History
from django_tasks_shared.web import metrics, present
from test_store import Clock, claim, make_store, rec


def run(store, task_id, status="SUCCESSFUL", clock=None, took=0.0, worker="w1", **fields):
    store.enqueue(rec(task_id, **fields))
    task = claim(store, worker)
    assert task["id"] == task_id
    if clock is not None:
        clock.advance(took)
    claim(store, worker, outcome={"id": task_id, "status": status,
                                  "errors": [] if status == "SUCCESSFUL" else [
                                      {"exception_class_path": "builtins.ValueError",
                                       "traceback": "ValueError: x"}]})


def test_histogram_counts_cumulative_buckets_sum_and_count():
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0, -1.0):
        hist.observe(value)
    assert hist.snapshot() == {"buckets": [[0.1, 3], [1.0, 4], ["+Inf", 5]],
                               "sum": 3.65, "count": 5}


def test_history_rings_are_bounded_and_follow_the_workers():
    hist = History(rate_points=3, worker_points=2, every=1.0)
    assert hist.sample(100.0, 0, {"a": (10, 1.0)}) is True
    assert hist.sample(100.5, 5, {"a": (11, 1.0)}) is False  # too soon: not sampled
    for i, t in enumerate((101.0, 102.0, 104.0, 105.0), start=1):
        hist.sample(t, 10 * i, {"a": (10 + i, 2.0), "b": (5, 0.0)} if i < 4 else {"b": (6, 0.0)})
    snap = hist.snapshot()
    assert snap["rate"] == [[102.0, 10.0], [104.0, 5.0], [105.0, 10.0]]  # the last 3 only
    assert list(snap["workers"]) == ["b"]  # "a" is gone: so is its ring
    assert snap["workers"]["b"] == [[104.0, 5, 0.0], [105.0, 6, 0.0]]


def test_store_observes_queue_wait_and_duration_and_the_supervisor_samples_history():
    clock = Clock()
    store = make_store(clock)
    store.enqueue(rec("a"))
    clock.advance(2.0)       # waited 2 s
    claim(store)
    clock.advance(0.3)       # ran 0.3 s
    claim(store, outcome={"id": "a", "status": "SUCCESSFUL"})
    hists = store.health()["histograms"]
    assert hists["queue_wait_seconds"]["sum"] == pytest.approx(2.0)
    assert hists["task_duration_seconds"]["sum"] == pytest.approx(0.3)
    assert dict((str(le), n) for le, n in hists["task_duration_seconds"]["buckets"])["0.5"] == 1
    store.sample_history()
    clock.advance(1.0)
    store.update_worker("w1", rss_bytes=1000, cpu_percent=12.5)
    store.sample_history()
    snap = store.history_snapshot()
    assert snap["rate"] == [[clock(), 0.0]]
    assert snap["workers"]["w1"][-1] == [clock(), 1000, 12.5]


def test_results_newest_first_filtered_and_paginated():
    clock = Clock()
    store = make_store(clock)
    for i in range(7):
        clock.advance(1)
        run(store, f"t{i}", status="FAILED" if i % 3 == 0 else "SUCCESSFUL",
            queue="emails" if i % 2 else "default")
    store.enqueue(rec("waiting"))  # not finished: never listed
    page = store.listing.results(limit=3)
    assert [r["id"] for r in page["rows"]] == ["t6", "t5", "t4"] and page["more"] is True
    page = store.listing.results(offset=3, limit=3)
    assert [r["id"] for r in page["rows"]] == ["t3", "t2", "t1"] and page["more"] is True
    assert [r["id"] for r in store.listing.results(offset=6, limit=3)["rows"]] == ["t0"]
    assert [r["id"] for r in store.listing.results(status="FAILED")["rows"]] == ["t6", "t3", "t0"]
    assert [r["id"] for r in store.listing.results(queue="emails")["rows"]] == ["t5", "t3", "t1"]
    assert store.listing.results(task="tasks.add")["rows"]
    assert not store.listing.results(task="nope")["rows"]
    row = store.listing.results(status="FAILED", limit=1)["rows"][0]
    assert row["error"] == "ValueError" and row["worker"] == "w1" and row["duration"] == 0.0
    store.get("t0")  # an LRU hit changes recency, not the listing order
    assert store.listing.results()["rows"][-1]["id"] == "t0"


def test_results_follow_eviction_and_the_finish_order_stays_bounded():
    store = make_store(max_results=10)
    for i in range(100):
        run(store, f"t{i}")
    rows = store.listing.results(limit=200)["rows"]
    assert [r["id"] for r in rows] == [f"t{i}" for i in range(99, 89, -1)]
    assert all(len(order) <= 2 * 10 + 64 + 1 for order in store.listing.orders.values())


def test_results_page_is_fast_with_10000_stored_results():
    store = make_store(max_results=10_000)
    for i in range(10_000):
        run(store, f"t{i}", status="FAILED" if i == 5 else "SUCCESSFUL")
    timings = {}
    for name, kwargs in (("newest page", {}), ("page 40", {"offset": 1000}),
                         ("failures only (own index)", {"status": "FAILED"}),
                         ("task name matching nothing (scans all)", {"task": "nope"})):
        started = time.perf_counter()
        for _ in range(20):
            store.listing.results(**kwargs)
        timings[name] = (time.perf_counter() - started) / 20 * 1000
    print("\n[measure] results() with 10,000 stored: " +
          ", ".join(f"{k} {v:.2f} ms" for k, v in timings.items()))
    assert timings["newest page"] < 2
    assert timings["failures only (own index)"] < 2
    assert timings["task name matching nothing (scans all)"] < 50


def test_chart_has_one_figure_for_its_height_the_peak():
    chart = present.chart([[1000.0, 0.0], [1300.0, 5.0], [1600.0, 10.0]], window=600, width=600,
                          height=120)
    assert chart["points"] == "0.0,119.0 300.0,65.4 600.0,11.7"  # top = peak + 10 %
    assert chart["peak"] == 10.0 and chart["last"] == 10.0
    assert chart["peak_y"] == "11.7"  # the dashed peak line goes through the highest point
    assert "top" not in chart  # no second "maximum" beside the peak (issue 17)
    assert chart["empty_until"] is None  # the window is full
    young = present.chart([[1590.0, 2.0], [1600.0, 4.0]], window=600, width=600)
    assert young["empty_until"] == "590.0"  # greyed: before the server's history starts
    assert present.chart([])["points"] == "" and present.chart([])["peak_y"] is None


def test_sparklines_start_at_zero_on_one_scale_and_follow_time():
    # 40 -> 44.7 MiB on a 0-50 MiB scale: a rise of a tenth of the height, not a cliff.
    spark = present.sparkline([(100.0, 40.0), (280.0, 44.7)], top=50.0, width=180, height=24)
    (x0, y0), (x1, y1) = [tuple(map(float, p.split(","))) for p in spark["points"].split()]
    assert (x0, x1) == (0.0, 180.0)
    assert y0 == pytest.approx(24 - 40 / 50 * 22 - 1, abs=0.05)  # 1 px margins, 0.1 px steps
    assert y1 == pytest.approx(24 - 44.7 / 50 * 22 - 1, abs=0.05)
    assert (y0 - y1) / 22 < 0.1
    # a worker 10 s old covers the last 10 s of the 180 s window, not the whole width
    young = present.sparkline([(270.0, 10.0), (280.0, 10.0)], top=50.0, width=180)
    assert young["points"].startswith("170.0,")
    assert present.nice_top(44.7) == 50 and present.nice_top(46.2) == 50
    assert present.nice_top(101) == 200 and present.nice_top(0) == 1 and present.nice_top(1) == 1
    assert present.nice_top(2.1) == 2.5 and present.nice_top(0.3) == pytest.approx(0.5)


def test_overview_workers_share_an_rss_scale_and_say_their_range():
    clock = Clock()
    store = make_store(clock, workers=("w1", "w2"))
    for rss in (40, 42, 44.7):
        clock.advance(1.0)
        store.update_worker("w1", rss_bytes=int(rss * 1024 * 1024), cpu_percent=10.0)
        store.update_worker("w2", rss_bytes=20 * 1024 * 1024, cpu_percent=0.0)
        store.sample_history()
    context = present.overview_context(store.listing.overview())
    assert context["rss_scale"] == "0–50 MiB" and context["cpu_scale"] == "0–100 %"
    w1, w2 = context["workers"]
    assert w1["rss_range"] == "40.0 MiB–44.7 MiB" and w2["rss_range"] == "20.0 MiB"
    assert w1["cpu_range"] == "10 %"
    top_of_w1 = min(float(p.split(",")[1]) for p in w1["rss_spark"]["points"].split())
    low_of_w2 = max(float(p.split(",")[1]) for p in w2["rss_spark"]["points"].split())
    assert top_of_w1 < low_of_w2  # the same scale: the bigger worker draws higher


def test_progress_bar_when_done_and_total_are_numbers():
    bar = present.progress_bar({"done": 40, "total": 100, "phase": "slow"})
    assert bar == {"width": "40.0", "percent": "40", "label": "40 / 100", "rest": "phase=slow"}
    assert present.progress_bar({"done": 150, "total": 100})["width"] == "100.0"
    for fields in ({"done": 1}, {"done": "1", "total": 2}, {"done": 1, "total": 0},
                   {"done": True, "total": 2}, {}, None):
        assert present.progress_bar(fields) is None, fields
    assert present.took(0.0042) == "4.2 ms" and present.took(0.25) == "250 ms"
    assert present.took(75) == "1m15s"


def test_a_task_that_succeeded_after_retries_is_not_shown_as_an_error():
    assert present.outcome_note("SUCCESSFUL", "ConnectionError", 2) == (
        "succeeded on attempt 2", "retried")
    assert present.outcome_note("SUCCESSFUL", None, 1) == ("", "")
    assert present.outcome_note("SUCCESSFUL", "ConnectionError", None)[1] == "retried"  # 0.1.0
    assert present.outcome_note("FAILED", "ValueError", 1) == ("ValueError", "error")
    assert present.outcome_note("FAILED", "ValueError", 3) == (
        "ValueError, after 3 attempts", "error")
    clock = Clock()
    store = make_store(clock, workers=("w1",))
    store.enqueue(rec("flaky"))
    claim(store, "w1")
    claim(store, "w1", outcome={"id": "flaky", "status": "SUCCESSFUL", "errors": [
        {"exception_class_path": "builtins.ConnectionError", "traceback": "ConnectionError"}]})
    record = store.get("flaky")
    record["worker_ids"] = ["w1", "w2"]  # as after two attempts
    context = present.task_context(record)
    assert context["errors_title"] == "Errors of the earlier attempts"
    assert "succeeded on attempt 2" in context["errors_note"]


def test_metrics_text_parses_with_every_promised_series():
    clock = Clock()
    store = make_store(clock, workers=("w1",))
    store.update_worker("w1", rss_bytes=50_000_000)
    run(store, "ok", clock=clock, took=0.2)
    run(store, "bad", status="FAILED", clock=clock, took=3.0)
    store.enqueue(rec("queued", queue="emails"))
    store.enqueue(rec("gone"))
    store.cancels.cancel("gone")
    body, content_type = metrics.render(store.health())
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in families.values() for s in f.samples}
    prefix = "django_tasks_shared"
    assert values[(f"{prefix}_up", ())] == 1
    for status, n in (("enqueued", 4), ("succeeded", 1), ("failed", 2), ("cancelled", 1),
                      ("worker_lost", 0), ("timed_out", 0)):
        assert values[(f"{prefix}_tasks_total", (("status", status),))] == n
    assert values[(f"{prefix}_pending", (("queue", "emails"),))] == 1
    assert values[(f"{prefix}_pending", (("queue", "default"),))] == 0
    assert values[(f"{prefix}_running", ())] == 0
    assert values[(f"{prefix}_workers", ())] == 1
    assert values[(f"{prefix}_worker_rss_bytes", (("worker", "w1"),))] == 50_000_000
    assert values[(f"{prefix}_results_stored", ())] == 3
    assert families[f"{prefix}_task_duration_seconds"].type == "histogram"
    assert values[(f"{prefix}_task_duration_seconds_count", ())] == 2
    assert values[(f"{prefix}_task_duration_seconds_sum", ())] == pytest.approx(3.2)
    assert values[(f"{prefix}_task_duration_seconds_bucket", (("le", "0.25"),))] == 1
    assert values[(f"{prefix}_task_duration_seconds_bucket", (("le", "+Inf"),))] == 2
    assert values[(f"{prefix}_queue_wait_seconds_count", ())] == 2


def test_metrics_of_an_unreachable_server_and_without_prometheus_client(monkeypatch):
    body, _ = metrics.render(None)
    samples = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]
    assert [(s.name, s.value) for s in samples] == [("django_tasks_shared_up", 0)]
    assert metrics.available()
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    assert not metrics.available()
    assert "django-tasks-shared[metrics]" in metrics.INSTALL_HINT


def test_rebuild_finish_order_after_a_restore_lists_by_finished_at():
    clock = Clock()
    store = make_store(clock)
    for i in range(3):
        clock.advance(1)
        run(store, f"t{i}")
    for order in store.listing.orders.values():
        order.clear()  # as after records were loaded from disk
    store.get("t0")  # LRU order now t1, t2, t0: the listing must still follow finished_at
    store.listing.rebuild()
    assert [r["id"] for r in store.listing.results()["rows"]] == ["t2", "t1", "t0"]


def test_a_status_with_no_result_walks_nothing():
    store = make_store()
    for i in range(5):
        run(store, f"t{i}")
    assert store.listing.orders["FAILED"] == deque()
    assert store.listing.results(status="FAILED")["rows"] == []
    assert len(store.listing.results(status="SUCCESSFUL")["rows"]) == 5


def test_overview_context_lists_running_tasks_longest_first_and_every_configured_queue():
    clock = Clock()
    store = make_store(clock, workers=("w1", "w2"))
    store.set_meta(queues=["default", "emails"])
    store.enqueue(rec("long"))
    claim(store, "w1")
    clock.advance(75)
    store.enqueue(rec("short"))
    claim(store, "w2")
    clock.advance(9)
    context = present.overview_context(store.listing.overview())
    assert [(t["id"], t["running_for"]) for t in context["running"]] == [
        ("long", "1m24s"), ("short", "9.0s")]
    assert [q["name"] for q in context["queues"]] == ["default", "emails"]
    assert context["status"] == "healthy" and context["reasons"] == []


def test_overview_shows_the_attempt_and_progress_of_running_tasks():
    store = make_store(Clock(), workers=("w1",))
    store.enqueue(rec("busy"))
    claim(store, "w1")
    assert store.save_metadata("busy", {"done": 40, "of": 100, "_internal": 1})
    [running] = present.overview_context(store.listing.overview())["running"]
    assert running["attempt"] == 1
    assert running["progress"] == "done=40, of=100"  # keys starting with _ are the backend's
    assert present.progress_text({"note": "x" * 200}).endswith("…")


def test_pools_and_limits_on_the_overview_and_in_metrics():
    clock = Clock()
    store = make_store(clock, workers=())
    store.register_worker("a", pid=1, pool="web", queues=["default"])
    store.set_meta(supervisor={"pools": [
        {"name": "web", "queues": ["default"], "workers_expected": 1, "workers_alive": 1,
         "threads": 1, "time_limit": None, "max_task_memory": None,
         "max_worker_memory": None, "max_tasks_per_worker": None},
        {"name": "reports", "queues": ["emails"], "workers_expected": 2, "workers_alive": 0,
         "threads": 1, "time_limit": 3600.0, "max_task_memory": 2048,
         "max_worker_memory": None, "max_tasks_per_worker": None}]})
    limited = rec("l1")
    limited["limit"] = {"key": "app.t:shop", "concurrency": 2, "rate": [10, 60.0]}
    store.flows.enqueue(limited)
    snapshot = store.listing.overview()
    context = present.overview_context(snapshot)
    assert [p["name"] for p in context["pools"]] == ["web", "reports"]
    assert context["workers"][0]["pool"] == "web"
    assert context["workflows"]["limits"][0]["rate"] == "10/m"
    body, _ = metrics.render(store.health())
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert values[("django_tasks_shared_pool_workers", (("pool", "reports"),))] == 0
    assert values[("django_tasks_shared_pool_workers_expected", (("pool", "reports"),))] == 2
    assert values[("django_tasks_shared_unique_keys_held", ())] == 0
