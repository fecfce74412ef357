"""The benchmark's CPU clock of another process (stress/bench/cpu.py), on real processes."""

import os
import subprocess
import sys
import time

from helpers import stop_process
from stress.bench.cpu import cpu_of, process_cpu

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.2: pass\n" \
       "print('burnt', flush=True)\ntime.sleep(60)"


def test_own_cpu_matches_process_time():
    ours, python = process_cpu(os.getpid()), time.process_time()
    assert abs(ours - python) < 0.01


def test_another_process_cpu_is_read_and_summed():
    proc = subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "burnt"
        cpu = process_cpu(proc.pid)
        # 0.2 s burnt plus the interpreter's start-up
        assert 0.2 <= cpu < 2.0
        assert cpu_of([proc.pid, proc.pid]) >= 2 * cpu
    finally:
        stop_process(proc)
    assert process_cpu(proc.pid) is None  # gone (reaped): no figure rather than a wrong one
    assert cpu_of([proc.pid]) == 0
