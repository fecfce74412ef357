"""`python -m stress.bench`: the benchmark (stress/bench/runner.py says what it runs)."""

import sys

from stress.bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
