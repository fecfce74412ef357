"""Settings of the stress harness (`python -m stress`), run from the repository root.

Workers import this module by name (DJANGO_SETTINGS_MODULE=stress.harness.settings). The backend's
OPTIONS come from the environment, set by the harness before anything imports Django, so that the
harness, its client processes, every AUTOSTARTed server and its workers agree:

    STRESS_ADDRESS   the server's socket path (or host:port)          (required)
    STRESS_OPTIONS   JSON object of extra OPTIONS (WORKERS, TIME_LIMIT, MAX_WORKER_MEMORY, ...)

To stress a server you run yourself, start it with the same settings:

    STRESS_ADDRESS=/tmp/s/tasks.sock DJANGO_SETTINGS_MODULE=stress.harness.settings \\
        python -m django tasks_server
    python -m stress --address /tmp/s/tasks.sock
"""

import json
import os

from stress.common.base_settings import *  # noqa: F403

SECRET_KEY = os.environ.get("STRESS_SECRET_KEY",
                            "stress-secret-key-not-for-production-0123456789")

_options = {"WORKERS": 2, "AUTOSTART": True, "TIME_LIMIT": 2.0, "MAX_WORKER_MEMORY": 100,
            "MAX_RESULTS": 1000}
_options.update(json.loads(os.environ.get("STRESS_OPTIONS") or "{}"))
if os.environ.get("STRESS_ADDRESS"):
    _options["ADDRESS"] = os.environ["STRESS_ADDRESS"]

TASKS = {
    "default": {"BACKEND": "django_tasks_shared.ProcessPoolBackend", "OPTIONS": _options},
}
