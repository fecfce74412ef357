"""Settings of the benchmark and the demo (`python -m stress.bench`, `python -m stress.demo`).

Workers import this module by name (DJANGO_SETTINGS_MODULE=stress.bench_settings), so it is a
real module, run from the repository root. Aliases:

    default  django_tasks_shared.ProcessPoolBackend, 2 workers, embedded server (no ADDRESS)
             unless BENCH_TASKS_ADDRESS names a socket of a started `tasks_server`
    local    django_tasks_local.ProcessPoolBackend, MAX_WORKERS=2 (the comparison; optional)

MAX_RESULTS is raised so that the 2,000 results of W1 are all still there when we wait for them.
"""

import os

SECRET_KEY = os.environ.get("BENCH_SECRET_KEY", "bench-secret-key-not-for-production-0123456789")
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = ["django_tasks_shared"]
DATABASES = {}
MIDDLEWARE = []

_options = {"WORKERS": int(os.environ.get("BENCH_WORKERS", "2")), "MAX_RESULTS": 10_000}
if os.environ.get("BENCH_TASKS_ADDRESS"):
    _options["ADDRESS"] = os.environ["BENCH_TASKS_ADDRESS"]

TASKS = {
    "default": {"BACKEND": "django_tasks_shared.ProcessPoolBackend", "OPTIONS": _options},
}
try:
    import django_tasks_local  # noqa: F401  (only the benchmark needs it)
except ImportError:
    pass
else:
    TASKS["local"] = {"BACKEND": "django_tasks_local.ProcessPoolBackend",
                      "OPTIONS": {"MAX_WORKERS": 2, "MAX_RESULTS": 10_000}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_tasks_shared": {"handlers": ["console"], "level": "WARNING"}},
}
