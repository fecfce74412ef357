"""Progress from inside a task, proven with a real server and a real worker: set in the task,
read from this (another) process and in `tasks_health` while it runs; coalesced in a fast loop
with the last value always delivered; bad values stored nowhere."""

import json
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import TaskResultDoesNotExist
from django.test import override_settings

from django_tasks_shared import progress, set_progress, wait
from helpers import MANAGE, child_env, running_server, wait_until
from testproject import tasks


def health_command(address, *args):
    return subprocess.run([sys.executable, MANAGE, "tasks_health", *args],
                          env=child_env(address), capture_output=True, text=True, timeout=20)


@pytest.mark.timeout(60)
def test_progress_is_read_from_another_process_while_the_task_runs():
    with running_server({"WORKERS": 1}) as srv, srv.settings():
        result = tasks.crunch.enqueue(60, 0.1, 20_000)  # 6 s slow, then fast
        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            fields = progress(result)
            if fields.get("phase") == "slow":
                seen.append(fields["done"])
                if fields["done"] >= 5:
                    break
            time.sleep(0.05)
        assert len(set(seen)) >= 3 and seen == sorted(seen), seen
        result.refresh()
        assert result.status == TaskResultStatus.RUNNING
        # tasks_health, JSON and human, shows it for the running task
        doc = json.loads(health_command(srv.address, "--json").stdout)
        current = [w["current_task"] for w in doc["workers"] if w["current_task"]]
        assert current and current[0]["id"] == result.id
        assert current[0]["progress"]["total"] == 20_060
        human = health_command(srv.address).stdout
        assert "total=20060, phase=slow" in human, human

        wait(result, timeout=20)
        assert result.status == TaskResultStatus.SUCCESSFUL
        # 20,000 calls in a tight loop: coalesced to one round trip per 0.1 s at most
        fast = result.return_value
        print(f"\n20,000 set_progress calls took {fast['seconds']:.3f} s, {fast['sends']} "
              "round trip(s)")
        assert fast["sends"] <= fast["seconds"] / 0.1 + 2
        # the last value arrives even though it came within 0.1 s of the one before
        assert progress(result) == {"done": 20_060, "total": 20_060, "phase": "fast"}

        # a value held back (it came 0.1 s after the last one sent) goes out ~0.1 s later even
        # if the task never calls again: a progress bar does not stick until the task ends
        paused = tasks.progress_then_pause.enqueue(5)
        wait_until(lambda: progress(paused) == {"step": 2}, 3, message="the held value")
        paused.refresh()
        assert paused.status == TaskResultStatus.RUNNING


@pytest.mark.timeout(60)
def test_bad_progress_is_a_clear_error_and_stores_nothing():
    with pytest.raises(RuntimeError, match="only inside a task run by a django-tasks-shared"):
        set_progress(done=1)
    with running_server({"WORKERS": 1}) as srv, srv.settings():
        result = tasks.progress_errors.enqueue()
        wait(result, timeout=20)
        assert result.status == TaskResultStatus.SUCCESSFUL, result.errors
        errors = result.return_value
        assert errors["not_json"].startswith("TypeError: set_progress() takes JSON-compatible")
        assert "reserved for task backends (_private)" in errors["reserved"]
        assert "over the 65536 byte limit" in errors["too_big"]
        assert all("nothing was stored" in text for text in errors.values())
        assert progress(result) == {"ok": 1}
        # Django's coming backend hook replaces a RUNNING task's metadata; finished: refused
        backend = task_backends["default"]
        assert backend.supports_metadata
        assert backend.save_metadata(result, {"stage": "late"}) is False
        running = tasks.sleep.enqueue(3)
        wait_until(lambda: progress(running) == {} and running.refresh() is None
                   and running.status == TaskResultStatus.RUNNING, 15, message="a running task")
        assert backend.save_metadata(running, {"stage": "copying"}) is True
        assert progress(running) == {"stage": "copying"}
        with pytest.raises(TaskResultDoesNotExist):
            progress(replace(result, id="0" * 32))


def test_progress_on_a_backend_without_metadata_is_a_clear_error():
    immediate = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
    with override_settings(TASKS=immediate):
        result = tasks.add.enqueue(1, 2)
        with pytest.raises(NotImplementedError, match="keeps no progress"):
            progress(result)
