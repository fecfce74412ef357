"""The connection storm of issue 9 (`python -m stress.storm`), end to end: a real `tasks_server`
with real workers, 5,000 real sockets opened and closed at once, a real client timed meanwhile.

The targets (p99 < 50 ms, threads and RSS back within 2 s, an idle connection < 64 KiB, SIGTERM
exit within --grace + 1 s) were all missed by the thread-per-connection server of v0.1 (see
docs/stress.md for its figures); the event loop (eventloop.py) meets them. The storm's
handshake is checked against the stdlib's own server side, and refusals beyond MAX_CONNECTIONS
are counted with a small limit.
"""

import json
import os
import subprocess
import sys
import threading
from argparse import Namespace
from multiprocessing import connection

import pytest

from helpers import short_socket_path, stop_process
from stress.storm.net import close_all, open_storm
from stress.storm.report import percentiles, verdicts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONNECTIONS = 5000
GRACE = 1.0


def run_storm(tmp_path, *args, timeout=140):
    report_path = tmp_path / "storm.json"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    popen = subprocess.Popen(
        [sys.executable, "-m", "stress.storm", "--json", str(report_path), *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = popen.communicate(timeout=timeout)
    finally:
        # On a timeout: SIGTERM (the tool then stops its server, workers and probe itself),
        # and anything it left behind is killed by pid.
        stop_process(popen, timeout=30)
    assert popen.returncode in (0, 1), stdout + stderr[-5000:]
    report = json.loads(report_path.read_text())
    assert ("RESULT: PASS" in stdout) == (popen.returncode == 0) == report["passed"]
    return report, stdout


@pytest.fixture(scope="module")
def storm(tmp_path_factory):
    """One full storm for the module (the run stops its server and probe by pid itself).
    Short waits for what the targets allow anyway: a server that has not recovered 5 s after a
    phase, or that has not exited 3 s after --grace + 1 s, has missed already."""
    report, stdout = run_storm(
        tmp_path_factory.mktemp("storm"), "--connections", str(CONNECTIONS),
        "--grace", str(GRACE), "--settle", "3", "--recover", "5", "--sigterm-wait", "5",
        "--open-timeout", "20")
    print(stdout)  # the figures, in the test output
    return report


def verdict(report, fragment):
    matching = [v for v in report["verdicts"] if fragment in v["target"]]
    assert matching, f"no target about {fragment!r}"
    return matching


@pytest.mark.timeout(30)
def test_storm_handshake_is_the_stdlib_protocol(tmp_path):
    """storm/net.py's hand-written handshake against multiprocessing.connection's server side
    (deliver_challenge, answer_challenge, then the accept_connection request); a wrong authkey
    is told apart."""
    address = short_socket_path()
    authkey = b"k" * 32
    listener = connection.Listener(address, authkey=authkey, backlog=64)
    served, errors = [], []

    def serve():
        while True:
            try:
                conn = listener.accept()  # the stdlib challenge, both ways
            except connection.AuthenticationError as exc:
                errors.append(exc)
                continue
            except OSError:
                return  # listener closed
            served.append(conn)
            conn.send(("#RETURN", None) if conn.recv() == (
                None, "accept_connection", ("x",), {}) else ("#ERROR", "bad request"))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        storm = open_storm(address, authkey, 20, 20, timeout=10)
        assert (storm.accepted, storm.handshaken, storm.failed) == (20, 20, 0), storm.counts()
        assert len(storm.idle) == 20 and not storm.raw
        assert storm.handshake_seconds is not None
        close_all(storm.idle)
        wrong = open_storm(address, b"w" * 32, 1, 1, timeout=10)
        assert (wrong.accepted, wrong.handshaken, wrong.failed) == (1, 0, 1)
        assert wrong.reasons == {"the server rejected our authkey": 1}
        assert len(errors) == 1
    finally:
        listener.close()
        for conn in served:
            conn.close()
        thread.join(5)


def test_storm_verdicts_count_what_was_not_measured_as_missed():
    """Pure code: a failed probe call, a skipped phase, a server that died before the SIGTERM
    are all MISS; phases not asked for have no target."""
    probe = percentiles([[0.0, 0.002, None]] * 99 + [[1.0, None, "ServerUnavailable: ..."]])
    assert probe["failed"] == 1 and probe["max_ms"] == float("inf") and probe["p99_ms"] == 2.0
    counts = {"requested": 10, "accepted": 10, "refused": 0, "failed": 0, "handshaken": 0,
              "handshakes_requested": 0, "reasons": {}}
    report = {"args": {"address": None}, "probe": {"during": probe},
              "raw": {"counts": counts, "back_after_s": 0.4, "threads_after_2s": 3,
                      "rss_after_2s": 1 << 20},
              "skipped": "half and later phases not run", "sigterm_exit_s": None,
              "exited_before_sigterm": -9}
    args = Namespace(phases=["raw", "half", "idle"], settle=10.0, max_connections=8192,
                     grace=1.0, sigterm_wait=5.0)
    results = {v["target"]: (v["result"], v["measured"]) for v in verdicts(report, args)}
    assert results["real client p99 < 50 ms during the storms, no call failed"][0] == "MISS"
    assert results["raw: threads and RSS back at baseline within 2 s"][0] == "PASS"
    assert results["half: threads and RSS back at baseline within 2 s"] == (
        "MISS", "not measured: half and later phases not run")
    assert results["an idle connection costs < 64 KiB"][0] == "MISS"
    assert results["SIGTERM exits within --grace + 1 s"] == (
        "MISS", "the server had exited before (code -9)")
    only_raw = verdicts(report, Namespace(**{**vars(args), "phases": ["raw"]}))
    assert not [v for v in only_raw if "half" in v["target"] or "idle" in v["target"]]


@pytest.mark.timeout(60)
def test_storm_beyond_max_connections_is_refused_with_the_reason(tmp_path):
    """300 at once against MAX_CONNECTIONS=200: every connection is either accepted or refused
    with the reason (none simply fails), and a real client trying meanwhile is told why."""
    report, _ = run_storm(tmp_path, "--connections", "300", "--max-connections", "200",
                          "--phases", "raw", "--grace", str(GRACE), "--settle", "3",
                          "--sigterm-wait", "10", timeout=50)
    counts = report["raw"]["counts"]
    assert counts["accepted"] + counts["refused"] == 300 and counts["failed"] == 0, counts
    # The workers and the probe hold a few of the 200 already.
    assert 190 <= counts["accepted"] <= 200 and counts["refused"] >= 100, counts
    assert counts["reasons"] == {
        "the task server holds MAX_CONNECTIONS=200 connections": counts["refused"]}
    told = report["raw"]["real_client_refused"]
    assert "refused the connection: the task server holds MAX_CONNECTIONS=200" in told
    assert "raise OPTIONS['MAX_CONNECTIONS']" in told
    [v] = verdict(report, "beyond MAX_CONNECTIONS")
    assert v["result"] == "PASS", v


@pytest.mark.timeout(150)
def test_storm_opens_5000_connections_at_once(storm):
    counts = storm["raw"]["counts"]
    assert counts["requested"] == CONNECTIONS
    assert counts["accepted"] == CONNECTIONS and counts["failed"] == counts["refused"] == 0
    # "At once": every connect() went through, so the storm really was in the server's lap.
    assert counts["connect_s"] is not None and counts["greet_s"] is not None
    assert storm["baseline"]["threads"] >= 1 and storm["baseline"]["rss"] > 0


@pytest.mark.timeout(150)
def test_storm_real_client_p99_under_50ms(storm):
    before, during = storm["probe"]["before"], storm["probe"]["during"]
    assert before["n"] >= 50 and during["n"] >= 50, storm["probe"]
    assert during["failed"] == 0, storm["probe"]
    assert during["p99_ms"] < 50, storm["probe"]


@pytest.mark.timeout(150)
def test_storm_threads_and_rss_back_at_baseline_within_2s(storm):
    for name in ("raw", "half"):
        [v] = verdict(storm, f"{name}: threads and RSS back")
        assert v["result"] == "PASS", v


@pytest.mark.timeout(150)
def test_storm_half_authenticated_all_accepted_and_idle_cost_under_64kib(storm):
    for name in ("half", "idle"):
        assert name in storm, storm.get("skipped")
        counts = storm[name]["counts"]
        assert counts["handshaken"] == counts["handshakes_requested"] == CONNECTIONS // 2, counts
        assert counts["failed"] == 0, counts
    assert storm["half"]["counts"]["accepted"] == CONNECTIONS
    [v] = verdict(storm, "idle connection costs")
    assert v["result"] == "PASS", v
    assert storm["idle"]["cost_bytes"] < 64 * 1024


@pytest.mark.timeout(150)
def test_storm_sigterm_exits_within_grace_plus_1s(storm):
    exit_s = storm["sigterm_exit_s"]
    assert exit_s is not None and exit_s <= GRACE + 1, exit_s
