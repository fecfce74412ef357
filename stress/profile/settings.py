"""Settings of `python -m stress.profile_worker`: the benchmark's (stress.bench.settings), and
with PROFILE_QUIET_TASK_LOG=1 Django's "django.tasks" logger at WARNING.

Django connects two receivers of its own to task_started and task_finished that log every task
at INFO ("Task id=... state=..."); under Django's default logging the "django" logger is at INFO,
so each task builds two log records that no handler emits (console needs DEBUG=True). A project
that does not want those lines can raise the level as below; the profile shows what it saves.
Workers import this module by name, as they do stress.bench.settings.
"""

import os

from stress.bench.settings import *  # noqa: F403
from stress.bench.settings import LOGGING

if os.environ.get("PROFILE_QUIET_TASK_LOG"):
    LOGGING = {**LOGGING, "loggers": {**LOGGING["loggers"],
                                      "django.tasks": {"level": "WARNING"}}}
