"""Settings of the small Django project the tests (and gunicorn / runserver in them) run.

The backend's OPTIONS come from the environment so a test can point a separate process at its
own server: TASKS_ADDRESS, TASKS_OPTIONS (JSON), TASKS_BACKEND. The admin (for its log-in page)
and the task page are mounted in urls.py; TASKS_TEST_DB names a SQLite file for a live server
process (in-process tests get pytest-django's test database).
"""

import json
import os

SECRET_KEY = os.environ.get("TASKS_SECRET_KEY", "tests-secret-key-not-for-production-0123456789")
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "testproject.urls"
INSTALLED_APPS = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages",
    "django_tasks_shared", "testproject",
] + [app for app in os.environ.get("TASKS_EXTRA_APPS", "").split(",") if app]  # deploy tests
_conn_max_age = os.environ.get("TASKS_CONN_MAX_AGE", "0")  # "none": persistent connections
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": os.environ.get("TASKS_TEST_DB", ":memory:"),
                         "CONN_MAX_AGE": None if _conn_max_age == "none" else int(_conn_max_age)}}
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
LOGIN_URL = "/admin/login/"
TASKS_SHARED_METRICS_TOKEN = os.environ.get("TASKS_METRICS_TOKEN") or None

_options = json.loads(os.environ.get("TASKS_OPTIONS") or "{}")
if os.environ.get("TASKS_ADDRESS"):
    _options["ADDRESS"] = os.environ["TASKS_ADDRESS"]
if "MAX_WORKERS" not in _options and "POOLS" not in _options and \
        "ThreadPool" not in os.environ.get("TASKS_BACKEND", ""):
    _options.setdefault("WORKERS", 2)  # MAX_WORKERS, POOLS (or a thread pool): no WORKERS too

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
