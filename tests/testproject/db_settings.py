"""The test project switched to django-tasks-db's DatabaseBackend (tests/test_scaling.py).

The switch is the TASKS setting; the database backend also needs its app (for its table and
its `db_worker` command) and a database. TASKS_DB_DIR names a temporary directory for SQLite.
"""

import os

from .settings import *  # noqa: F403

INSTALLED_APPS = ["django_tasks_shared", "django_tasks_db", "testproject"]
DATABASES = {"default": {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": os.path.join(os.environ["TASKS_DB_DIR"], "tasks.sqlite3"),
    "OPTIONS": {"timeout": 20},  # a worker and clients write at once: wait for the lock
}}
TASKS = {
    "default": {
        "BACKEND": "django_tasks_db.DatabaseBackend",
        "QUEUES": ["default", "emails"],
    },
}
