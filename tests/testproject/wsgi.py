"""WSGI entry point of the test project (gunicorn serves it in tests/test_gunicorn.py).

With TASKS_WSGI_WARMUP=1 the importing process makes one call to the task server right away, so
under `gunicorn --preload` the master holds a live connection when it forks its workers: each
worker must open its own instead of sharing the master's socket.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

application = get_wsgi_application()

if os.environ.get("TASKS_WSGI_WARMUP") == "1":
    from django.tasks import task_backends

    task_backends["default"].health()
