"""Settings of the foreign suites' runs (python -m stress.contract). Worker processes load
Django from this module (DJANGO_SETTINGS_MODULE), whatever the suite configures in-process."""

import os

SECRET_KEY = "contract-suites-settings-not-a-secret-0123456789"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_tasks_shared"]
INSTALLED_APPS += [app for app in os.environ.get("CONTRACT_APPS", "").split(",") if app]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": os.environ.get("CONTRACT_DB", ":memory:"),
                         "OPTIONS": {"timeout": 30}}}  # workers and the client write at once
_options = {"MAX_WORKERS": 2, "MAX_RESULTS": 5}
if os.environ.get("CONTRACT_OPTIONS"):
    import json

    _options = json.loads(os.environ["CONTRACT_OPTIONS"])
TASKS = {"default": {"BACKEND": os.environ.get("CONTRACT_BACKEND",
                                               "django_tasks_shared.ThreadPoolBackend"),
                     "OPTIONS": _options}}
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "handlers": {"console": {"class": "logging.StreamHandler"}},
           "loggers": {"django_tasks_shared": {"handlers": ["console"], "level": "WARNING"}}}
