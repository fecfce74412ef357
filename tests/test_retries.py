"""Retries with back-off, proven with a real server and real workers: a flaky task succeeds on its
third attempt after measured delays, backend defaults, WorkerLost retried only when named, and
clear errors for bad policies (run with -s to see the delays printed)."""

import os
import time

import pytest
from django.tasks import TaskResultStatus

from django_tasks_shared import retry, wait
from django_tasks_shared.client.options import ConfigError, build_config
from django_tasks_shared.exceptions import WorkerLost
from django_tasks_shared.protocol.retry_policy import backoff
from helpers import SECRET_KEY, ServerProcess, running_server, temp_dir, wait_until
from test_durability import kill_server_and_orphans
from testproject import tasks


def attempt_times(path):
    with open(path) as f:
        return [float(line.split()[1]) for line in f]


@pytest.mark.timeout(60)
def test_flaky_task_succeeds_on_its_third_attempt_after_growing_delays():
    directory = temp_dir()
    signals, attempts = os.path.join(directory, "signals"), os.path.join(directory, "attempts")
    with running_server({"WORKERS": 1}, env={"TASKS_SIGNAL_LOG": signals}) as srv, \
            srv.settings():
        result = tasks.flaky.enqueue(attempts, 2)  # @retry(3, delay=0.3, factor=2)
        wait(result, timeout=20)
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value == 3  # TaskContext.attempt inside the third attempt
        assert result.attempts == 3 and len(result.worker_ids) == 3
        assert [e.exception_class for e in result.errors] == [ConnectionError, ConnectionError]
        assert "attempt 2 of a flaky task fails" in result.errors[1].traceback
        first, second, third = attempt_times(attempts)
        gaps = (second - first, third - second)
        print(f"\nretry delays measured: {gaps[0]:.3f} s (policy 0.3 s), {gaps[1]:.3f} s "
              "(policy 0.6 s), jitter up to +10 %")
        # never earlier than the back-off; later only by jitter and scheduling
        assert 0.3 <= gaps[0] <= 0.3 * 1.1 + 0.25
        assert 0.6 <= gaps[1] <= 0.6 * 1.1 + 0.25
        with open(signals) as f:
            fired = f.read().split("\n")
        assert sum(line.startswith("task_started") for line in fired) == 3
        finished = [line for line in fired if line.startswith("task_finished")]
        assert finished == [f"task_finished {result.id} SUCCESSFUL"]  # once, at the end
        assert srv.client().call("health")["counters"]["retried"] == 2


@pytest.mark.timeout(60)
def test_backend_defaults_and_which_failures_are_retried():
    attempts = os.path.join(temp_dir(), "attempts")
    with running_server({"WORKERS": 2}) as srv, \
            srv.settings(RETRY={"max_attempts": 2, "delay": 0.1}):
        failing = tasks.fail.enqueue("always")          # no @retry: OPTIONS["RETRY"] applies
        own = tasks.fail_once_only.enqueue("once")      # @retry(max_attempts=1) wins
        lost = tasks.die.enqueue()                      # WorkerLost: not named in `on`
        wait(failing, timeout=20)
        wait(own, timeout=20)
        wait(lost, timeout=20)
        assert failing.status == TaskResultStatus.FAILED and failing.attempts == 2
        assert [e.exception_class for e in failing.errors] == [ValueError, ValueError]
        assert own.status == TaskResultStatus.FAILED and own.attempts == 1
        assert lost.status == TaskResultStatus.FAILED and lost.attempts == 1
        assert lost.errors[0].exception_class is WorkerLost
        # named in `on`: the worker dies on attempt 1, attempt 2 succeeds under the same id
        survivor = tasks.dies_once.enqueue(attempts)
        wait(survivor, timeout=20)
        assert survivor.status == TaskResultStatus.SUCCESSFUL
        assert survivor.return_value == "survived" and survivor.attempts == 2
        assert [e.exception_class for e in survivor.errors] == [WorkerLost]
        counters = srv.client().call("health")["counters"]
        assert counters["retried"] == 2 and counters["failed"] == 3


@pytest.mark.timeout(90)
def test_retries_survive_a_server_crash_with_state_dir():
    """A task waiting for its retry is journaled; a task running at the crash whose policy names
    WorkerLost goes back to the queue on restore (one without such a policy would end FAILED)."""
    directory = temp_dir()
    attempts, running = os.path.join(directory, "attempts"), os.path.join(directory, "running")
    options = {"WORKERS": 2, "STATE_DIR": os.path.join(directory, "state")}
    srv = ServerProcess(options=options, args=("--grace", "1"))
    try:
        srv.wait_ready()
        with srv.settings():
            result = tasks.flaky_slow.enqueue(attempts)  # attempt 2 due 2 s after attempt 1
            cut = tasks.slow_first.enqueue(running)      # attempt 1 runs 30 s
            wait_until(lambda: srv.client().call("get", result.id)["status"] == "READY"
                       and os.path.exists(attempts) and os.path.exists(running), 15,
                       message="the first attempt to fail and the slow one to run")
        kill_server_and_orphans(srv)  # SIGKILL: only the journal knows the retry
    finally:
        srv.stop()
    again = ServerProcess(address=srv.address, options=options, args=("--grace", "1"))
    try:
        again.wait_ready()
        with again.settings():
            wait(result, timeout=20)
            assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 2
            assert [e.exception_class for e in result.errors] == [ConnectionError]
            assert result.attempts == 2
            wait(cut, timeout=20)
            assert cut.status == TaskResultStatus.SUCCESSFUL and cut.return_value == 2
            assert [e.exception_class for e in cut.errors] == [WorkerLost]
            assert "it goes back to the queue" in cut.errors[0].traceback
    finally:
        again.stop()


def test_backoff_formula_and_cap():
    policy = {"delay": 1.0, "factor": 2.0, "max_delay": 5.0}
    assert [backoff(policy, n, rng=lambda: 0.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert backoff(policy, 1, rng=lambda: 1.0) == pytest.approx(1.1)  # jitter: at most +10 %


def build(options):
    return build_config("default", options, kind="process", queues=("default",),
                        secret_key=SECRET_KEY, settings_module="testproject.settings")


@pytest.mark.parametrize("value, message", [
    ([3], "must be a dict"),
    ({"attempts": 3}, "unknown key(s) 'attempts'"),
    ({"max_attempts": 0}, "'max_attempts' must be a whole number >= 1"),
    ({"delay": -1}, "'delay' must be a number >= 0"),
    ({"factor": 0.5}, "'factor' must be a number >= 1"),
    ({"on": ()}, "'on' must be a non-empty tuple"),
    ({"on": ["no.such.Error"]}, "'on' entry 'no.such.Error' cannot be imported"),
    ({"on": [int]}, "is not an exception class"),
])
def test_bad_retry_option_is_a_clear_error(value, message):
    with pytest.raises(ConfigError, match="OPTIONS\\['RETRY'\\]") as excinfo:
        build({"RETRY": value})
    assert message in str(excinfo.value)


def test_retry_option_in_record_form():
    config = build({"RETRY": {"max_attempts": 5, "on": (ConnectionError, "builtins.KeyError")}})
    assert config.retry == {"max_attempts": 5,
                            "on": ["builtins.ConnectionError", "builtins.KeyError"]}


def test_bad_retry_decorator_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="@retry: 'max_attempts' must be a whole number >= 1"):
        retry(max_attempts=1.5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'backoff'"):
        retry(backoff=2)
    with pytest.raises(ValueError, match="@retry: 'on' entry .* is not an exception class"):
        retry(on=(int,))
    with pytest.raises(TypeError, match="decorates a task function"):
        retry(max_attempts=2)(42)


def test_retry_leaves_the_function_callable_and_the_task_importable():
    assert tasks.flaky.module_path == "testproject.tasks.flaky"
    assert tasks.flaky.func.django_tasks_shared_retry["max_attempts"] == 3
    assert tasks.flaky.func.__name__ == "flaky"


@pytest.mark.timeout(30)
def test_scheduled_runs_carry_the_tasks_retry_policy():
    """The server enqueues SCHEDULE runs without importing the task: the policy is resolved
    where Django runs (server start-up) and travels in the schedule entry."""
    from django_tasks_shared.schedules.resolve import resolve_config
    from django_tasks_shared.schedules.scheduler import Scheduler
    from django_tasks_shared.store import TaskStore

    config = build({"ADDRESS": "/tmp/x.sock", "RETRY": {"max_attempts": 4, "delay": 5},
                    "SCHEDULE": {"flaky": {"task": "testproject.tasks.flaky", "every": 10,
                                           "args": ["/dev/null", 0]},
                                 "add": {"task": "testproject.tasks.add", "every": 10,
                                         "args": [1, 2]}}})
    config = resolve_config(config)
    by_name = {entry["name"]: entry for entry in config.schedules}
    # @retry(max_attempts=3, delay=0.3, on=(ConnectionError,)) over OPTIONS["RETRY"]
    assert by_name["flaky"]["retry"] == {"max_attempts": 3, "delay": 0.3, "factor": 2.0,
                                         "max_delay": 300.0, "on": ["builtins.ConnectionError"]}
    assert by_name["add"]["retry"]["max_attempts"] == 4  # no @retry: the backend's RETRY
    store = TaskStore()
    scheduler = Scheduler(config, store)
    record = store.get(scheduler.enqueue(by_name["flaky"], time.time()))
    assert record["retry"]["on"] == ["builtins.ConnectionError"]
