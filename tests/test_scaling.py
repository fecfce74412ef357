"""Outgrowing one host: the test task module, unchanged, on django-tasks-db's DatabaseBackend.

Real processes only: `migrate`, the backend's own `db_worker`, and two client processes that use
the same public calls as on our backend (enqueue, get_result, wait, wait_all). Only the TASKS
setting differs (tests/testproject/db_settings.py).
"""

import json
import subprocess
import sys

import pytest

from helpers import MANAGE, child_env, stop_process, temp_dir

# Enqueue through the public API, wait with our wait()/wait_all() (polling here), print results.
CLIENT = r"""
import json, sys, time
import django
django.setup()
from datetime import timedelta
from django.tasks import task_backends
from django.utils import timezone
from django_tasks_shared import wait, wait_all
from testproject import tasks

assert type(task_backends["default"]).__name__ == "DatabaseBackend"
single = tasks.add.enqueue(2, 3)
started = time.monotonic()
wait(single, timeout=30)
single_wait = time.monotonic() - started
batch = [
    tasks.add.enqueue(40, 2),
    tasks.send_email.enqueue("ada@example.com"),            # queue "emails"
    tasks.async_add.enqueue(1, 1),                           # a coroutine task
    tasks.with_context.enqueue(7),                           # takes_context
    tasks.fail.enqueue("boom"),                              # raises
    tasks.add.using(priority=10).enqueue(1, 2),
    tasks.add.using(run_after=timezone.now() + timedelta(seconds=1)).enqueue(5, 5),  # deferred
]
wait_all(batch, timeout=60)
slow = tasks.sleep.enqueue(3)
try:
    wait(slow, timeout=0.3)
    timed_out = False
except TimeoutError as exc:
    timed_out = str(exc)
print(json.dumps({
    "single": [single.id, single.status, single.return_value, single_wait],
    "batch": [[r.id, r.status, r.return_value if r.status == "SUCCESSFUL" else
               r.errors[0].exception_class_path] for r in batch],
    "timed_out": timed_out,
}))
"""

# Another process reads the results by id: get_result, as on our backend.
READER = r"""
import json, sys
import django
django.setup()
from django.tasks import task_backends
ids = json.loads(sys.argv[1])
print(json.dumps([[r.status, r.return_value if r.status == "SUCCESSFUL" else None]
                  for r in map(task_backends["default"].get_result, ids)]))
"""


def test_the_test_tasks_run_unchanged_on_django_tasks_db():
    directory = temp_dir()
    env = child_env(DJANGO_SETTINGS_MODULE="testproject.db_settings", TASKS_DB_DIR=directory)
    migrate = subprocess.run([sys.executable, MANAGE, "migrate", "-v", "0"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert migrate.returncode == 0, migrate.stderr
    worker = subprocess.Popen(
        [sys.executable, MANAGE, "db_worker", "--queue-name", "*", "--interval", "0.1",
         "--no-startup-delay", "--no-reload"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = subprocess.run([sys.executable, "-c", CLIENT], env=env, capture_output=True,
                                text=True, timeout=100)
        assert client.returncode == 0, client.stderr
        out = json.loads(client.stdout)
        single_id, status, value, waited = out["single"]
        assert (status, value) == ("SUCCESSFUL", 5)
        assert waited < 10
        assert [row[1:] for row in out["batch"]] == [
            ["SUCCESSFUL", 42],
            ["SUCCESSFUL", "sent to ada@example.com"],
            ["SUCCESSFUL", 2],
            ["SUCCESSFUL", {"id": out["batch"][3][0], "attempt": 1, "x": 7}],
            ["FAILED", "builtins.ValueError"],
            ["SUCCESSFUL", 3],
            ["SUCCESSFUL", 10],
        ]
        assert "still unfinished after 0.3 s" in out["timed_out"]
        ids = [single_id] + [row[0] for row in out["batch"]]
        reader = subprocess.run([sys.executable, "-c", READER, json.dumps(ids)], env=env,
                                capture_output=True, text=True, timeout=60)
        assert reader.returncode == 0, reader.stderr
        assert json.loads(reader.stdout) == [[s, v] for s, v in [
            ["SUCCESSFUL", 5], ["SUCCESSFUL", 42], ["SUCCESSFUL", "sent to ada@example.com"],
            ["SUCCESSFUL", 2], ["SUCCESSFUL", {"id": ids[4], "attempt": 1, "x": 7}],
            ["FAILED", None], ["SUCCESSFUL", 3], ["SUCCESSFUL", 10]]]
    finally:
        stop_process(worker)
    assert worker.returncode is not None


def test_wait_on_a_backend_that_cannot_fetch_results_says_why():
    from django.test import override_settings

    from django_tasks_shared import wait, wait_all
    from testproject import tasks

    dummy = {"default": {"BACKEND": "django.tasks.backends.dummy.DummyBackend"}}
    with override_settings(TASKS=dummy):  # keeps results in memory, never runs them
        result = tasks.add.enqueue(1, 2)
        message = (r"TASKS\['default'\] \(django.tasks.backends.dummy.DummyBackend\) has "
                   r"supports_get_result = False")
        with pytest.raises(NotImplementedError, match=message):
            wait(result, timeout=1)
        with pytest.raises(NotImplementedError, match=message):
            wait_all([result], timeout=1)


# @unique, @limit and after() on django-tasks-db: refused at enqueue, naming the backend, before
# it stores anything (they would silently do nothing there).
WORKFLOWS_ELSEWHERE = r"""
import json
import django
django.setup()
from django_tasks_db.models import DBTaskResult
from django_tasks_shared import after
from testproject import flow_tasks, tasks

plain = tasks.add.enqueue(1, 2)
errors = []
for attempt in (lambda: flow_tasks.unique_job.enqueue("k"),
                lambda: flow_tasks.limited.enqueue(0),
                lambda: after([plain], tasks.add, 3, 4)):
    try:
        attempt()
        errors.append(None)
    except NotImplementedError as exc:
        errors.append(str(exc))
print(json.dumps({"errors": errors, "rows": DBTaskResult.objects.count()}))
"""


def test_unique_limit_and_after_refuse_another_backend_at_enqueue():
    directory = temp_dir()
    env = child_env(DJANGO_SETTINGS_MODULE="testproject.db_settings", TASKS_DB_DIR=directory)
    migrate = subprocess.run([sys.executable, MANAGE, "migrate", "-v", "0"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert migrate.returncode == 0, migrate.stderr
    client = subprocess.run([sys.executable, "-c", WORKFLOWS_ELSEWHERE], env=env,
                            capture_output=True, text=True, timeout=60)
    assert client.returncode == 0, client.stderr
    out = json.loads(client.stdout)
    assert out["rows"] == 1  # only the plain task: nothing stored for the refused ones
    for error, what in zip(out["errors"], ("@unique", "@limit", "after()"), strict=True):
        assert error is not None and error.startswith(what)
        assert "django_tasks_db.backend.DatabaseBackend" in error
        assert "Nothing was enqueued" in error
