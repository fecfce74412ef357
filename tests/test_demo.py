"""The README's main job and the benchmark run to their end on a fresh tree: `python -m
stress.demo` (what ./scripts/demo runs) and a short `python -m stress.bench`, each with its clean
shutdown (the embedded servers they own stopped by pid: no traceback at exit)."""

import json
import os
import subprocess
import sys

import pytest

from helpers import TESTS_DIR, temp_dir

ROOT = os.path.dirname(TESTS_DIR)


def _run(*args, timeout):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.timeout(120)
def test_the_demo_runs_and_says_ok():
    done = _run("stress.demo", "--processes", "2", "--tasks", "10", "--sample", "2", timeout=100)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "OK: every process saw every other process's results" in done.stdout, out
    assert "Traceback" not in out, out


@pytest.mark.timeout(240)
def test_a_short_benchmark_runs_to_its_end():
    report = os.path.join(temp_dir(), "bench.json")
    done = _run("stress.bench", "--quick", "--repeat", "1", "--no-state", "--no-huey",
                "--json", report, timeout=220)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    with open(report) as f:
        figures = json.load(f)
    assert figures, "the benchmark wrote no figures"
