"""The stress checker's disk-full rules (`--faults enospc`, stress/harness/disk.py), on
hand-made observations (pure code, no processes, no tmpfs): every fill must be followed by a
recovery seen in health within the bound, the last server must not still be failing, and a task
that ran through a fill gets the TIME_LIMIT pause the server gives it, no more."""

from stress.harness import disk as harness_disk

FILL = {"t": 100.0, "bytes": 1 << 20, "freed_at": 102.0, "failure_seen": True,
        "resumed_s": 0.8}
REFUSED = ("1.0 The task server cannot write its STATE_DIR /x (ENOSPC ...); nothing was "
           "stored")


def test_a_fill_recovered_from_passes_and_is_counted():
    ok, detail, bad, figures = harness_disk.check([FILL], [REFUSED, "2.0 down"], {"state": {}})
    assert ok and bad == []
    assert figures["fills"] == 1 and figures["enqueues_refused"] == 1
    assert figures["resume_seconds_max"] == 0.8 and figures["seconds_full"] == 2.0
    assert "1 fill(s)" in detail


def test_no_recovery_a_slow_one_or_a_failing_last_server_fail():
    stuck = dict(FILL, resumed_s=None)
    assert not harness_disk.check([stuck], [], None)[0]
    slow = dict(FILL, resumed_s=harness_disk.RESUME_BOUND + 1)
    assert "bound" in harness_disk.check([slow], [], None)[2][0]
    failing = {"state": {"failure": {"errno": "ENOSPC"}}}
    assert "still reports" in harness_disk.check([FILL], [], failing)[2][0]
    assert not harness_disk.check([], [], None)[0]  # the fault was asked for: it must happen


def test_time_allowance_only_for_tasks_that_ran_through_a_fill():
    pause = 102.8 - 100.0 + harness_disk.PAUSE_SLACK + harness_disk.REPORT_GRACE
    through = {"started_at": 99.0, "ran_max": 6.0}
    assert harness_disk.time_allowance([FILL], through) == pause
    handed_out_in_the_failing_turn = {"started_at": 99.99, "ran_max": 0.5}
    assert harness_disk.time_allowance([FILL], handed_out_in_the_failing_turn) == pause
    before = {"started_at": 90.0, "ran_max": 2.0}   # ended long before the fill
    after = {"started_at": 103.0, "ran_max": 2.0}   # started once the server had resumed
    assert harness_disk.time_allowance([FILL], before) == 0.0
    assert harness_disk.time_allowance([FILL], after) == 0.0
    assert harness_disk.time_allowance([FILL], {"started_at": None}) == 0.0
