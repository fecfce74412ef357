"""Settings of the small Django project the tests (and gunicorn in them) run.

The backend's OPTIONS come from the environment so a test can point a separate process at its
own server: TASKS_ADDRESS, TASKS_OPTIONS (JSON), TASKS_BACKEND.
"""

import json
import os

SECRET_KEY = os.environ.get("TASKS_SECRET_KEY", "tests-secret-key-not-for-production-0123456789")
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "testproject.urls"
INSTALLED_APPS = ["django_tasks_shared", "testproject"] + [
    app for app in os.environ.get("TASKS_EXTRA_APPS", "").split(",") if app]  # deploy tests
DATABASES = {}
MIDDLEWARE = []

_options = json.loads(os.environ.get("TASKS_OPTIONS") or "{}")
if os.environ.get("TASKS_ADDRESS"):
    _options["ADDRESS"] = os.environ["TASKS_ADDRESS"]
if "MAX_WORKERS" not in _options and "ThreadPool" not in os.environ.get("TASKS_BACKEND", ""):
    _options.setdefault("WORKERS", 2)  # MAX_WORKERS (or a thread pool) must not get WORKERS too

TASKS = {
    "default": {
        "BACKEND": os.environ.get("TASKS_BACKEND", "django_tasks_shared.ProcessPoolBackend"),
        "QUEUES": ["default", "emails"],
        "OPTIONS": _options,
    },
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_tasks_shared": {"handlers": ["console"], "level": "INFO"}},
}
