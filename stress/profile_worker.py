"""`python -m stress.profile_worker`: a worker's CPU per task (stress/profile/worker.py)."""

import sys

from stress.profile.worker import main

if __name__ == "__main__":
    sys.exit(main())
