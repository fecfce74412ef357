"""Behaving like Django's backends and like django-tasks-local where a user touches it (issue
17): override_settings, backends built directly, enqueue(task, None, None) and close(), a
KeyboardInterrupt in a task, started_at across retries, tasks in __main__ and results whose task
no longer imports, the system checks without the app, and the server's log."""

import json
import os
import re
import subprocess
import sys
import time

import pytest
from django.core import checks
from django.tasks import default_task_backend, task_backends
from django.tasks.exceptions import InvalidTask
from django.test import modify_settings, override_settings

from django_tasks_shared import ThreadPoolBackend, wait
from django_tasks_shared.protocol.records import new_record
from django_tasks_shared.store import TaskStore
from helpers import child_env, running_server, short_socket_path, temp_dir
from testproject import tasks

KEYBOARD_INTERRUPT, SYSTEM_EXIT = "builtins.KeyboardInterrupt", "builtins.SystemExit"


def run_child(script, env, timeout=90):
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"child exited {proc.returncode}:\n{proc.stderr}"
    return proc


# ---- 1, 2, 3, 7: override_settings, a backend built directly, django-tasks-local's API, __main__

# Runs as `python -c`: its functions are __main__'s. Embedded mode (no ADDRESS): this process
# starts the servers and owns them; they stop when it exits.
EMBEDDED = r"""
import json, threading
import django
django.setup()
from django.conf import settings
from django.tasks import task
from django.tasks.exceptions import InvalidTask
from django.test import override_settings
from django_tasks_shared import ThreadPoolBackend, wait
from testproject import tasks

out = {}
override_settings(TASKS=settings.TASKS).enable()  # settings.SETTINGS_MODULE is None from here
result = wait(tasks.add.enqueue(2, 3), 30)
out["override"] = [result.status, result.return_value]

def in_a_thread():  # a backend first built in a new thread, inside another override
    with override_settings(DEBUG=True):
        result = wait(tasks.add.enqueue(4, 5), 30)
        out["thread"] = [result.status, result.return_value]

thread = threading.Thread(target=in_a_thread)
thread.start()
thread.join(60)

direct = ThreadPoolBackend(alias="adhoc", params={"OPTIONS": {"THREADS": 2}})
result = wait(direct.enqueue(tasks.add, [20, 22]), 30)  # wait() finds the direct backend
again = direct.get_result(result.id)
out["direct"] = [again.status, again.return_value, again.backend, again.task.backend]
out["defaults"] = wait(direct.enqueue(tasks.whoami), 30).status  # args=None, kwargs=None
out["none"] = wait(direct.enqueue(tasks.add, None, {"a": 1, "b": 2}), 30).return_value
direct.close()
out["after_close"] = direct.get_result(result.id).return_value
supervisor = direct.health()["server"]["supervisor"]
out["direct_workers"] = [supervisor["workers_alive"], supervisor["last_failure"]]

try:
    @task
    def hello():
        return "hi"
except InvalidTask as exc:
    out["main"] = str(exc)
print(json.dumps(out))
"""


@pytest.mark.timeout(120)
def test_override_settings_a_direct_backend_and_main_in_embedded_mode():
    env = child_env(None, {"WORKERS": 1},
                    TASKS_SECRET_KEY=f"contract-test-{os.getpid()}-{time.time_ns()}")
    out = json.loads(run_child(EMBEDDED, env).stdout.strip().splitlines()[-1])
    assert out["override"] == ["SUCCESSFUL", 5]
    assert out["thread"] == ["SUCCESSFUL", 9]
    # a backend that settings.TASKS does not name: its worker runs (no crash loop), its result
    # keeps its alias; its task keeps the backend its decorator named (Django cannot find
    # "adhoc" by name)
    assert out["direct"] == ["SUCCESSFUL", 42, "adhoc", "default"]
    assert out["defaults"] == "SUCCESSFUL" and out["none"] == 3
    assert out["after_close"] == 42
    assert out["direct_workers"] == [1, None]
    assert "defined in __main__" in out["main"] and "move it into a module" in out["main"]


@pytest.mark.timeout(10)
def test_autostart_config_under_override_settings_reads_the_environment():
    """settings.SETTINGS_MODULE is None under override_settings; the worker processes' settings
    module comes from DJANGO_SETTINGS_MODULE then (it is what they load)."""
    address = short_socket_path()
    with override_settings(TASKS={"default": {
            "BACKEND": "django_tasks_shared.ProcessPoolBackend",
            "OPTIONS": {"ADDRESS": address, "AUTOSTART": True}}}):
        from django.conf import settings

        assert settings.SETTINGS_MODULE is None
        config = task_backends["default"].config
    assert config.autostart and config.settings_module == os.environ["DJANGO_SETTINGS_MODULE"]


# ---- 7: a result whose task no longer imports ----------------------------------------------------

@pytest.mark.timeout(60)
def test_a_result_whose_task_does_not_import_is_readable_and_its_end_signalled():
    log = os.path.join(temp_dir(), "signals")
    with running_server({"WORKERS": 1}, env={"TASKS_SIGNAL_LOG": log}) as srv, srv.settings():
        client = srv.client()
        wait(tasks.add.enqueue(1, 1), 20)  # the worker imports tasks.py: its receivers connect
        ids = {}
        for path in ("testproject.gone.vanished", "__main__.hello"):
            record = new_record(id=os.urandom(16).hex(), task=path, args=[], kwargs={})
            client.call("enqueue", record)
            ids[path] = record["id"]
        for path, task_id in ids.items():
            record = client.call("wait", task_id, 10.0)
            assert record["status"] == "FAILED", record
            result = default_task_backend.get_result(task_id)  # no ImportError: readable
            assert result.status == "FAILED"
            assert result.task.module_path == path
            assert result.task.name == path.rsplit(".", 1)[1]
            assert result.errors[-1].exception_class_path == "builtins.ImportError"
            assert "cannot be imported in this process" in result.errors[-1].traceback
            with pytest.raises(ImportError, match="cannot be imported in this process"):
                result.task.call()
            with pytest.raises(InvalidTask, match="cannot be imported"):
                result.task.enqueue()
            assert wait(result, 5).status == "FAILED"  # wait() and refresh work on it too
        # the worker ran it as a task that raises ImportError: both signals fired
        with open(log) as f:
            lines = f.read().splitlines()
        for task_id in ids.values():
            assert f"task_started {task_id} RUNNING" in lines
            assert f"task_finished {task_id} FAILED" in lines


# ---- 4: KeyboardInterrupt and SystemExit raised by a task ----------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("threads", [2, 1])
def test_a_task_raising_keyboard_interrupt_fails_and_its_thread_lives_on(threads):
    backend = "django_tasks_shared.ThreadPoolBackend"
    with running_server({"THREADS": threads}, env={"TASKS_BACKEND": backend}) as srv, \
            srv.settings():
        pid = srv.client().call("health")["workers"][0]["pid"]
        for task, path in ((tasks.interrupt, KEYBOARD_INTERRUPT), (tasks.exit_task, SYSTEM_EXIT)):
            result = wait(task.enqueue(), 20)
            assert result.status == "FAILED"
            assert result.errors[-1].exception_class_path == path
        spans = [s.return_value for s in
                 [wait(r, 20) for r in [tasks.sleep_span.enqueue(1.0) for _ in range(threads)]]]
        assert {span["pid"] for span in spans} == {pid}  # the same worker process ran them
        if threads == 2:  # both threads are alive: the two tasks overlapped
            assert max(s["start"] for s in spans) < min(s["end"] for s in spans), spans
        counters = srv.client().call("health")["counters"]
        assert counters["worker_lost"] == 0 and counters["worker_restarts"] == 0


# ---- 6: started_at is the first start; TIME_LIMIT counts per attempt -----------------------------

@pytest.mark.timeout(10)
def test_a_retry_keeps_started_at_and_moves_last_attempted_at_and_the_limit_clock():
    clock = [1_000.0]
    store = TaskStore(clock=lambda: clock[0])
    store.register_worker("w", pid=1)
    policy = {"max_attempts": 3, "delay": 1.0, "factor": 1.0, "max_delay": 1.0,
              "on": ["builtins.Exception"]}
    store.enqueue(new_record(id="t", task="x.y", args=[], kwargs={}, retry=policy))
    store.polls.finish_and_claim("w", None, 0)
    clock[0] += 5
    store.polls.finish_and_claim("w", {"id": "t", "status": "FAILED", "finished_at": clock[0],
                                       "retry": True, "errors": []}, 0)
    clock[0] += 2  # past the back-off
    assert store.polls.finish_and_claim("w", None, 0)["id"] == "t"
    record = store.records["t"]
    assert record["started_at"] == 1_000.0 and record["last_attempted_at"] == 1_007.0
    clock[0] += 3
    assert store.overdue(4.0) == []                    # 3 s into this attempt, 10 s in all
    assert [t for _, t, _ in store.overdue(2.0)] == ["t"]
    running = store.health()["workers"][0]["current_task"]
    assert running["running_for"] == 3.0 and running["attempt"] == 2


# ---- 6 and 11 with real processes: the server's log, a per-attempt TIME_LIMIT --------------------

@pytest.mark.timeout(60)
def test_the_log_names_failed_and_retried_attempts_and_limits_count_per_attempt():
    attempts = os.path.join(temp_dir(), "attempts")
    with running_server({"WORKERS": 1, "TIME_LIMIT": 2}) as srv, srv.settings():
        failed = wait(tasks.fail.enqueue("boom"), 20)
        flaky = wait(tasks.flaky.enqueue(attempts, 1), 20)
        slow = wait(tasks.slow_flaky.enqueue(1.3), 20)  # 2 x 1.3 s under TIME_LIMIT=2
    text = srv.output()
    assert "(1 worker x 1 thread each)" in text and "1 workers" not in text
    assert re.search(rf"task {failed.id} \(testproject\.tasks\.fail\) failed, attempt 1:\n"
                     r"Traceback \(most recent call last\):\n[\s\S]*?ValueError: boom\n", text)
    assert re.search(rf"task {flaky.id} \(testproject\.tasks\.flaky\) attempt 1 of 3 failed; it "
                     r"will be retried:\nTraceback[\s\S]*?ConnectionError: attempt 1 of a flaky "
                     r"task fails\n", text)
    assert flaky.status == "SUCCESSFUL" and flaky.attempts == 2
    with open(attempts) as f:
        first, second = (float(line.split()[1]) for line in f)
    # Django's meaning: started_at the first start, last_attempted_at the last one
    assert flaky.started_at.timestamp() <= first < flaky.last_attempted_at.timestamp() <= second
    assert slow.status == "SUCCESSFUL" and slow.return_value == 2
    assert (slow.finished_at - slow.started_at).total_seconds() > 2.5  # over TIME_LIMIT in all
    assert "0 pending tasks and 3 results are lost: no STATE_DIR" in text


# ---- 8: the system checks without the app; a relative ADDRESS or STATE_DIR -----------------------

def _messages(options):
    return ThreadPoolBackend("checked", {"OPTIONS": options}).check()


@pytest.mark.timeout(10)
def test_checks_say_what_to_add_and_warn_of_relative_paths():
    assert _messages({"ADDRESS": "/run/tasks.sock"}) == []
    assert _messages({"ADDRESS": "127.0.0.1:7000"}) == []
    relative = _messages({"ADDRESS": "run/tasks.sock", "STATE_DIR": "state"})
    assert [m.id for m in relative] == ["django_tasks_shared.W003"] * 2
    assert "OPTIONS['ADDRESS'] 'run/tasks.sock' is a relative path" in relative[0].msg
    assert "OPTIONS['STATE_DIR'] 'state' is a relative path" in relative[1].msg
    with modify_settings(INSTALLED_APPS={"remove": ["django_tasks_shared"]}):
        [message] = _messages({"ADDRESS": "/run/tasks.sock"})
    assert isinstance(message, checks.Warning) and message.id == "django_tasks_shared.W002"
    assert message.hint.startswith('Add "django_tasks_shared" to INSTALLED_APPS: the commands')


NO_APP_SETTINGS = """
SECRET_KEY = "no-app-project-secret-key-0123456789-0123456789"
INSTALLED_APPS = ["django.contrib.contenttypes", "noapp"]
TASKS = {"default": {"BACKEND": "django_tasks_shared.ProcessPoolBackend",
                     "OPTIONS": {"ADDRESS": "run/tasks.sock"}}}
"""


@pytest.mark.timeout(60)
def test_manage_py_check_and_first_use_without_the_app_say_what_to_add():
    root = temp_dir()
    os.makedirs(os.path.join(root, "noapp"))
    with open(os.path.join(root, "noapp", "__init__.py"), "w") as f:
        f.write("")
    with open(os.path.join(root, "noapp", "apps.py"), "w") as f:
        f.write("from django.apps import AppConfig\n\n\nclass NoappConfig(AppConfig):\n"
                "    name = 'noapp'\n\n    def ready(self):\n        import django.tasks  # noqa\n")
    with open(os.path.join(root, "noapp_settings.py"), "w") as f:
        f.write(NO_APP_SETTINGS)
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="noapp_settings",
               PYTHONPATH=os.pathsep.join([root, *sys.path]))
    env.pop("TASKS_OPTIONS", None)
    check = subprocess.run([sys.executable, "-m", "django", "check"], env=env, cwd=root,
                           capture_output=True, text=True, timeout=30)
    text = check.stdout + check.stderr
    assert "django_tasks_shared.W002" in text and "INSTALLED_APPS" in text, text
    assert "django_tasks_shared.W003" in text and "'run/tasks.sock' is a relative path" in text
    first_use = run_child("import django; django.setup(); from django.tasks import "
                          "task_backends; task_backends['default']; task_backends['default']",
                          env)
    assert first_use.stderr.count('add "django_tasks_shared" to INSTALLED_APPS') == 1
