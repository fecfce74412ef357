"""`python -m stress.storm`: the connection storm (stress/storm/run.py says what it does)."""

import sys

from stress.storm.run import main

if __name__ == "__main__":
    sys.exit(main())
