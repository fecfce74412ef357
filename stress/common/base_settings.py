"""The Django settings that every settings module of stress/ shares (stress/harness/settings.py,
stress/bench/settings.py, and through the latter stress/profile/settings.py): no database, no
middleware, this package as the only app, its logger at WARNING on the console.

Not a settings module by itself (no SECRET_KEY, no TASKS): each of those star-imports it.
"""

DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = ["django_tasks_shared"]
DATABASES = {}
MIDDLEWARE = []

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_tasks_shared": {"handlers": ["console"], "level": "WARNING"}},
}
