"""A deploy that mixes releases: the server still runs 0.1.0 (tests/fixtures, the last flat-layout
release) while the package on disk is this one.

    tasks_server (0.1.0 code, imported from a copy on PYTHONPATH) ── 0.1.0 workers
      this process (current code) enqueues, waits, reads results       (new client, old server)
    the copy is replaced by the current code (what `pip install` of a new release does)
      tasks_reload (current code) ── the old server spawns its worker command, which now
      imports the current code: new workers claim, report and set progress against the old
      server                                                            (new workers, old server)

The worker command, the worker spec on stdin and the exposed method names must stay compatible
across one release for this to pass.
"""

import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from django_tasks_shared import progress, wait
from helpers import MANAGE, TESTS_DIR, ServerProcess, temp_dir, wait_until
from testproject import flow_tasks, tasks

FIXTURE = os.path.join(TESTS_DIR, "fixtures", "django_tasks_shared-0.1.0-src.tar.gz")
SRC = os.path.dirname(os.path.abspath(__import__("django_tasks_shared").__file__))


def _old_code():
    """A directory whose django_tasks_shared is 0.1.0's (the caller replaces it later)."""
    root = temp_dir()
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(root, filter="data")
    return os.path.join(root, "django_tasks_shared_0_1_0")


def _version_of(srv):
    return srv.client().call("health")["server"]["version"]


@pytest.mark.timeout(120)
def test_new_clients_and_reloaded_workers_work_with_a_0_1_0_server():
    code = _old_code()
    env = {"PYTHONPATH": os.pathsep.join([code, TESTS_DIR, *sys.path]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    srv = ServerProcess(options={"WORKERS": 1}, env=env, args=["--grace", "10"])
    try:
        srv.wait_ready()
        assert _version_of(srv) == "0.1.0"
        with srv.settings():
            before = wait(tasks.add.enqueue(2, 3), 20)  # a 0.1.0 worker runs it
            assert before.status == "SUCCESSFUL" and before.return_value == 5
            assert tasks.add.get_result(before.id).return_value == 5
            # a workflow task needs the new server's enqueue_workflow: a clear error, not a
            # task enqueued without its unique key (or limit, or dependencies)
            with pytest.raises(NotImplementedError, match="older release"):
                flow_tasks.unique_job.enqueue("mixed")
            assert srv.client().call("health")["counters"]["enqueued"] == 1

            # the deploy: the package on disk becomes this release, then a reload
            shutil.rmtree(os.path.join(code, "django_tasks_shared"))
            shutil.copytree(SRC, os.path.join(code, "django_tasks_shared"),
                            ignore=shutil.ignore_patterns("__pycache__"))
            done = subprocess.run([sys.executable, MANAGE, "tasks_reload", "--wait"],
                                  env={**srv.env, "PYTHONPATH": os.pathsep.join(
                                      [TESTS_DIR, *sys.path])},
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
            health = srv.client().call("health")
            assert health["server"]["version"] == "0.1.0"  # the server itself is still old
            assert [w["generation"] for w in health["workers"]] == [2]

            # the new worker serves the old server: plain, context, retry, progress, failure
            results = [tasks.add.enqueue(i, i) for i in range(20)]
            for i, result in enumerate(results):
                assert wait(result, 20).return_value == 2 * i
            in_context = wait(tasks.with_context.enqueue(7), 20).return_value
            assert in_context["x"] == 7 and in_context["attempt"] == 1
            pausing = tasks.progress_then_pause.enqueue(0.5)
            wait_until(lambda: progress(pausing), 15, message="progress from a new worker")
            assert wait(pausing, 20).status == "SUCCESSFUL"
            failed = wait(tasks.fail.enqueue("boom"), 20)
            assert failed.status == "FAILED" and "boom" in failed.errors[0].traceback
            counters = srv.client().call("health")["counters"]
            assert counters["worker_lost"] == 0, counters
    finally:
        srv.stop()
