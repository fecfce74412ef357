"""`python -m stress.profile_server`: the server's CPU per task (stress/profile/server.py)."""

import sys

from stress.profile.server import main

if __name__ == "__main__":
    sys.exit(main())
