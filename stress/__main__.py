"""`python -m stress` (from the repository root): the stress harness with fault injection.

    python -m stress --quick                      # ~20 s, what tests/test_stress.py runs
    python -m stress --tasks 20000 --clients 4 --workers 4 --kill-every 1 \\
        --restarts 2 --restart-signal both --json report.json
    python -m stress --quick --state-dir /tmp/state  # restarts must lose nothing (STATE_DIR)
    python -m stress --help

Exit status 0 when every invariant holds, 1 when one fails, 2 when no server can be reached.
See stress/harness/run.py (processes and faults) and stress/harness/check.py (invariants).
"""

import sys

from stress.harness.run import main

if __name__ == "__main__":
    sys.exit(main())
