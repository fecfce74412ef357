"""The benchmark's pure helpers (no processes): issue 9's targets judged per repeat with
"met k/N" (stress/bench/targets.py), and the portable mode's polling loop
(stress/bench/portable.py)."""

import pytest

from stress.bench import portable as bench_portable
from stress.bench import targets as bench_targets
from stress.bench.targets import Target


def rep(shared, local=None, huey=None):
    out = {"shared": shared}
    if local is not None:
        out["local"] = local
    if huey is not None:
        out["huey"] = huey
    return out


def samples(*repeats):
    """[{system: figures}, ...] per repeat -> {system: [figures per repeat]}"""
    out = {}
    for r in repeats:
        for name, figures in r.items():
            out.setdefault(name, []).append(figures)
    return out


RATIO = Target("W1 >= 1.6x local", ("shared", "w1_tps"), ("local", "w1_tps"), ">=", 1.6, "x")
CPU = Target("server CPU <= 70 us", ("shared", "cpu"), None, "<=", 70.0, " us")


def test_a_ratio_is_paired_within_each_repeat_and_counted():
    # Repeat 1: 2000/1000 = 2.0 (met); repeat 2: 1500/1000 = 1.5 (not); repeat 3: 3400/2000.
    got = bench_targets.judge(samples(
        rep({"w1_tps": 2000}, {"w1_tps": 1000}),
        rep({"w1_tps": 1500}, {"w1_tps": 1000}),
        rep({"w1_tps": 3400}, {"w1_tps": 2000})), [RATIO])[0]
    assert got["values"] == [2.0, 1.5, 1.7]
    assert (got["met"], got["repeats"], got["median"], got["pass"]) == (2, 3, 1.7, True)


def test_a_limit_from_above_and_a_median_that_misses():
    got = bench_targets.judge(samples(rep({"cpu": 60.0}), rep({"cpu": 90.0}),
                                      rep({"cpu": 80.0})), [CPU])[0]
    assert (got["met"], got["median"], got["pass"]) == (1, 80.0, False)


def test_a_missing_system_or_a_text_figure_is_not_met_and_left_out_of_the_median():
    huey = Target("W1 >= 3x Huey", ("shared", "w1_tps"), ("huey", "w1_tps"), ">=", 3.0, "x")
    got = bench_targets.judge(samples(rep({"w1_tps": 3000}, huey={"w1_tps": 500}),
                                      rep({"w1_tps": 3000}, huey={"w1_tps": "n/a"})), [huey])[0]
    assert got["values"] == [6.0, None]
    assert (got["met"], got["median"], got["pass"]) == (1, 6.0, True)
    skipped = bench_targets.judge(samples(rep({"w1_tps": 3000})), [huey])[0]
    assert (skipped["median"], skipped["pass"], skipped["met"]) == (None, None, 0)
    lines = bench_targets.report_lines([skipped])
    assert "SKIP" in lines[-1]


def test_report_lines_say_pass_or_miss_with_met_k_of_n():
    verdicts = bench_targets.judge(samples(rep({"cpu": 60.0}), rep({"cpu": 90.0})), [CPU])
    line = bench_targets.report_lines(verdicts)[-1]
    assert line.split()[0] == "MISS"  # median 75 > 70
    assert "met 1/2" in line and "[60.00 90.00]" in line


def test_every_issue_9_target_reads_a_figure_the_bench_produces():
    from stress.bench.runner import METRICS

    produced = {key for key, *_ in METRICS}
    for t in bench_targets.TARGETS:
        for side in filter(None, (t.num, t.den)):
            assert side[1] in produced, t.label


class Pending:
    """A result that reports done after `polls` polls."""

    def __init__(self, polls):
        self.left = polls

    def done(self):
        self.left -= 1
        return self.left <= 0


def test_wait_polling_polls_only_the_pending_ones_each_pass():
    results = [Pending(1), Pending(3), Pending(2)]
    calls = []

    def is_done(r):
        calls.append(r)
        return r.done()

    bench_portable.wait_polling(results, is_done, interval=0.0)
    # pass 1: all three; pass 2: the two left; pass 3: the last one
    assert len(calls) == 3 + 2 + 1


def test_wait_polling_gives_up_after_its_timeout():
    with pytest.raises(TimeoutError, match="1 of 2 results still pending"):
        bench_portable.wait_polling([Pending(1), Pending(10**9)], lambda r: r.done(),
                                    interval=0.001, timeout=0.05)
