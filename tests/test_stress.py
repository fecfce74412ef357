"""The stress harness, end to end: `python -m stress --quick` with worker kills and two server
restarts (SIGKILL, then SIGTERM), in a subprocess (it starts its own server, clients and
workers, and stops them by pid)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(150)
def test_quick_stress_run_passes_every_invariant(tmp_path):
    report_path = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items()
           if k not in ("DJANGO_SETTINGS_MODULE", "STRESS_ADDRESS", "STRESS_OPTIONS")}
    proc = subprocess.run(
        [sys.executable, "-m", "stress", "--quick", "--json", str(report_path)],
        cwd=ROOT, env=env, capture_output=True, timeout=140)
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()  # bytes: keep the \r
    assert proc.returncode == 0, stdout + stderr[-5000:]
    assert "RESULT: PASS" in stdout
    assert "\r[" in stderr  # the progress bar, redrawn in place

    report = json.loads(report_path.read_text())
    assert report["passed"] is True
    names = {i["name"]: i for i in report["invariants"]}
    for fragment in ("terminal state exactly once", "no duplicated execution",
                     "outcome matches its workload", "cross-client lookups",
                     "MAX_RESULTS", "workers back", "RSS", "faults injected", "run_after"):
        matching = [i for name, i in names.items() if fragment in name]
        assert matching, f"no invariant about {fragment!r}"
        assert all(i["ok"] for i in matching), matching

    tasks, faults = report["tasks"], report["faults"]
    assert tasks["enqueued"] == tasks["planned"] == 400
    assert tasks["terminal"] + tasks["lost_with_server"] == tasks["enqueued"]
    assert tasks["missing"] == tasks["unfinished"] == 0
    assert tasks["terminal"] > tasks["lost_with_server"]
    assert faults["worker_kills"] >= 1
    assert faults["server_restarts"] == faults["server_restarts_recovered"] == 2
    assert faults["restart_signals"] == ["kill", "term"]  # a crash, then a graceful drain
    assert faults["client_saw_server_unavailable"] >= 1
    assert report["results"]["max_stored"] <= report["results"]["max_results"]
    outcomes = tasks["outcomes_by_workload"]
    assert outcomes["fail"].get("StressFailure")
    assert outcomes["crash"].get("WorkerLost")
    # TIME_LIMIT holds during a drain too: a restart by SIGTERM does not wait out the grace.
    assert all(seconds < 15 for seconds in faults["recovery_seconds"]), faults
    for q in ("p50", "p95", "p99"):
        assert report["latency_ms"]["successful"][q] is not None
