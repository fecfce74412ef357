"""A task the workers cannot import: a clear FAILED result, a worker that lives on."""

import importlib
import os
import subprocess
import sys
import textwrap

import pytest
from django.tasks import TaskResultStatus

from django_tasks_shared import wait
from helpers import child_env, temp_dir
from testproject import tasks

MODULE = textwrap.dedent("""
    from django.tasks import task

    @task
    def only_here(x):
        return x * 2
""")


@pytest.fixture
def module_only_in_this_process():
    """A task module on this test process's sys.path only (not on the server's or workers')."""
    directory = temp_dir(prefix="dts-mod-")
    name = "dts_only_here_" + os.path.basename(directory).replace("-", "_")
    with open(os.path.join(directory, name + ".py"), "w") as f:
        f.write(MODULE)
    sys.path.insert(0, directory)
    try:
        yield name, directory
    finally:
        sys.path.remove(directory)
        sys.modules.pop(name, None)


@pytest.mark.timeout(60)
def test_unimportable_task_fails_clearly_and_the_worker_lives_on(
        server, module_only_in_this_process):
    name, directory = module_only_in_this_process
    with server.settings():
        module = importlib.import_module(name)
        result = wait(module.only_here.enqueue(21), timeout=20)
        assert result.status == TaskResultStatus.FAILED
        error = result.errors[0]
        assert error.exception_class_path == "builtins.ImportError"
        assert f"task '{name}.only_here'" in error.traceback
        assert "cannot be imported in this process" in error.traceback
        assert "must be able to import the task's module" in error.traceback
        # No worker died for it, and the next task runs.
        assert server.client().call("health")["counters"]["worker_lost"] == 0
        assert wait(tasks.add.enqueue(1, 1), timeout=20).return_value == 2

        # A process that cannot import the task still reads the result (issue 17: no 500 in a
        # view); its stand-in task raises the clear error when called.
        code = textwrap.dedent(f"""
            import django
            django.setup()
            from django.tasks import default_task_backend
            result = default_task_backend.get_result({result.id!r})
            print(result.status, result.task.module_path)
            try:
                result.task.call()
            except ImportError as exc:
                print("ImportError:", exc)
        """)
        env = child_env(server.address)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in env["PYTHONPATH"].split(os.pathsep) if p != directory)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=30)
        assert f"FAILED {name}.only_here" in out.stdout, out.stdout + out.stderr
        assert "ImportError: task" in out.stdout, out.stdout + out.stderr
        assert "cannot be imported in this process" in out.stdout
