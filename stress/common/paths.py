"""The repository root, for the tools that start processes from it (see stress/common/)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
