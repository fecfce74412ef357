"""testproject.settings, but importing it fails while the file named by TASKS_BREAK_MARKER exists.

A test starts `tasks_server` with this module (the marker absent, so the server and its first
workers start), then creates the marker and kills the workers: every replacement now dies in
`django.setup()`, exactly like a deploy that broke the settings, and the supervisor must back off.
"""

import os

from testproject.settings import *  # noqa: F403

_marker = os.environ.get("TASKS_BREAK_MARKER")
if _marker and os.path.exists(_marker):
    raise RuntimeError(f"broken settings for the test: marker {_marker} exists")
