"""OPTIONS["SCHEDULE"]: validation, due-time computation, the server's scheduler end to end."""

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from django.tasks import task_backends
from django.tasks.exceptions import InvalidTaskBackend

from django_tasks_shared import health
from django_tasks_shared.client.options import ConfigError, build_config
from django_tasks_shared.protocol.config import Config
from django_tasks_shared.schedules import entries as schedules
from django_tasks_shared.schedules.scheduler import Scheduler, durable_key
from django_tasks_shared.store import TaskStore
from helpers import (
    MANAGE,
    SECRET_KEY,
    Clock,
    ServerProcess,
    child_env,
    ping,
    short_socket_path,
    stop_process,
    tasks_settings,
    temp_dir,
    wait_until,
)
from testproject import tasks

LEDGER = "testproject.tasks.ledger"


def config_with(schedule, queues=("default", "emails"), time_zone="UTC"):
    return build_config("default", {"SCHEDULE": schedule, "ADDRESS": "/tmp/x.sock"},
                        kind="process", queues=queues, secret_key=SECRET_KEY,
                        settings_module="testproject.settings", time_zone=time_zone)


# ---- validation (pure) ------------------------------------------------------------------------

@pytest.mark.parametrize(("entry", "message"), [
    ({"task": "app.tasks.x"}, "give exactly one of 'cron' (e.g. '0 3 * * *') and 'every' "
                              "(seconds), not neither"),
    ({"task": "app.tasks.x", "cron": "0 3 * * *", "every": 5}, "not both"),
    ({"task": "app.tasks.x", "cron": "0 25 * * *"}, "bad cron expression '0 25 * * *'"),
    ({"task": "app.tasks.x", "cron": "every day"}, "bad cron expression 'every day'"),
    ({"task": "app.tasks.x", "every": 0}, "'every' must be a number of seconds >= 0.1"),
    ({"task": "app.tasks.x", "every": "30"}, "'every' must be a number of seconds"),
    ({"task": "app.tasks.x", "cron": "* * * * *", "timezone": "Mars/Olympus"},
     "unknown time zone 'Mars/Olympus'"),
    ({"task": "app.tasks.x", "every": 5, "timezone": "UTC"}, "'timezone' applies to 'cron' only"),
    ({"task": "app.tasks.x", "every": 5, "queue_name": "nope"},
     "queue 'nope' is not in this backend's QUEUES ('default', 'emails')"),
    ({"task": "app.tasks.x", "every": 5, "args": [object()]}, "must be JSON-serializable"),
    ({"task": "app.tasks.x", "every": 5, "priority": 500}, "'priority' must be a whole number"),
    ({"task": "report", "every": 5}, "'task' must be the dotted path"),
    ({"task": "app.tasks.x", "every": 5, "cron_expr": "x"}, "unknown key(s) 'cron_expr'"),
])
def test_bad_schedule_is_a_config_error_naming_the_entry(entry, message):
    with pytest.raises(ConfigError) as info:
        config_with({"nightly-report": entry})
    assert "OPTIONS['SCHEDULE']['nightly-report']" in str(info.value)
    assert message in str(info.value)


def test_good_schedule_is_normalised_and_travels_in_the_spec():
    config = config_with({
        "nightly": {"task": "app.tasks.report", "cron": "0 3 * * *"},
        "beat": {"task": "app.tasks.beat", "every": 30, "args": (1, 2), "kwargs": {"a": [3]},
                 "priority": 5, "queue_name": "emails"},
    }, time_zone="Europe/Paris")
    nightly, beat = config.schedules
    assert nightly["timezone"] == "Europe/Paris"  # Django's TIME_ZONE is the default for cron
    assert (beat["every"], beat["args"], beat["timezone"]) == (30.0, [1, 2], None)
    spec = json.loads(json.dumps(config.to_spec()))
    assert Config.from_spec(spec).schedules == config.schedules


# ---- due times (pure) -------------------------------------------------------------------------

def test_cron_next_due_time_in_its_time_zone():
    paris = config_with({"r": {"task": "a.b", "cron": "0 3 * * *",
                               "timezone": "Europe/Paris"}}).schedules[0]
    start = datetime(2026, 6, 10, 12, 0, tzinfo=UTC).timestamp()
    due = schedules.next_due(paris, start)
    # 03:00 in Paris in summer is 01:00 UTC, the next day
    assert datetime.fromtimestamp(due, UTC) == datetime(2026, 6, 11, 1, 0, tzinfo=UTC)
    # strictly after: asking at the due time gives the next day's
    assert schedules.next_due(paris, due) - due == 86400
    # across the end of summer time (25 Oct 2026, 03:00 CEST -> 02:00 CET in Paris), from
    # 24 Oct 03:00 CEST to 25 Oct 03:00 CET is 25 hours
    before = datetime(2026, 10, 23, 12, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    first = schedules.next_due(paris, before)
    assert schedules.next_due(paris, first) - first == 25 * 3600
    quarter = config_with({"q": {"task": "a.b", "cron": "*/15 * * * *"}}).schedules[0]
    at = datetime(2026, 6, 10, 12, 7, 30, tzinfo=UTC).timestamp()
    assert datetime.fromtimestamp(schedules.next_due(quarter, at), UTC).minute == 15


def test_every_next_due_and_description():
    entry = config_with({"b": {"task": "a.b", "every": 2.5}}).schedules[0]
    assert schedules.next_due(entry, 100.0) == 102.5
    assert schedules.describe(entry) == "every 2.5 s"


# ---- the scheduler against a real store, with a controlled clock (pure code) -----------------


def test_missed_slots_while_down_give_one_run_at_start_up_not_one_per_slot():
    config = config_with({"beat": {"task": LEDGER, "every": 10, "args": ["/dev/null"]}})
    clock = Clock(1_000_000.0)
    store = TaskStore(clock=clock)
    # The last run (as a STATE_DIR would restore it) was 100 slots ago.
    store.durable[durable_key("beat")] = {
        "due": clock.now - 1000, "task": LEDGER, "when": "every 10 s", "id": "old"}
    scheduler = Scheduler(config, store, clock=clock)
    scheduler.plan()  # what start() does before it starts the thread
    scheduler.run_due()
    assert store.health()["pending"] == 1                     # one run, not a hundred
    assert scheduler.next_due["beat"] == clock.now + 10       # then the normal rhythm
    clock.now += 5
    scheduler.run_due()
    assert store.health()["pending"] == 1
    clock.now += 5
    scheduler.run_due()
    assert store.health()["pending"] == 2
    # A stall of 35 s (three slots) gives one run, then the next slot after now.
    clock.now += 35
    scheduler.run_due()
    assert store.health()["pending"] == 3
    assert scheduler.next_due["beat"] > clock.now
    note = store.durable[durable_key("beat")]
    record = store.get(note["id"])
    assert (record["task"], record["args"], record["status"]) == (LEDGER, ["/dev/null"], "READY")
    report = store.health()["schedules"]
    assert report == [{"name": "beat", "task": LEDGER, "when": "every 10 s",
                       "next_run": scheduler.next_due["beat"],
                       "last_run": dict(note, status="READY")}]


def test_a_full_queue_skips_the_slot_and_says_so():
    config = config_with({"beat": {"task": LEDGER, "every": 1, "args": ["/dev/null"]}})
    clock = Clock(5000.0)
    store = TaskStore(clock=clock, max_queue=1)
    scheduler = Scheduler(config, store, clock=clock)
    scheduler.next_due = {"beat": clock.now}
    scheduler.run_due()
    clock.now += 1
    scheduler.run_due()  # the queue holds one pending task: this slot is skipped
    note = store.durable[durable_key("beat")]
    assert note["id"] is None and "MAX_QUEUE=1" in note["error"]
    assert store.health()["pending"] == 1
    text = health.render(health.report(store.health()), now=clock.now)
    assert "skipped: the task queue holds MAX_QUEUE=1 pending tasks" in text


def test_health_report_shows_next_and_last_run():
    snapshot = {"server": {"version": "0.1.0", "workers_expected": 0}, "workers": [],
                "schedules": [
                    {"name": "nightly", "task": "app.tasks.report", "when": "cron '0 3 * * *' UTC",
                     "next_run": 1000.0 + 3600, "last_run": None},
                    {"name": "beat", "task": "app.tasks.beat", "when": "every 30 s",
                     "next_run": 1010.0, "last_run": {"due": 980.0, "id": "a" * 32,
                                                      "status": "SUCCESSFUL", "error": None}}]}
    doc = health.report(snapshot)
    assert doc["schedules"] == snapshot["schedules"]
    lines = health.render(doc, now=1000.0).splitlines()
    start = lines.index("schedules 2")
    assert lines[start + 1].split() == ["NAME", "TASK", "WHEN", "NEXT", "RUN", "LAST", "RUN",
                                        "(due)", "LAST", "RESULT", "STATUS"]
    assert "(in 1h00m)" in lines[start + 2] and lines[start + 2].rstrip().endswith("-")
    assert "(in 10.0s)" in lines[start + 3] and "(20.0s ago)" in lines[start + 3]
    assert lines[start + 3].rstrip().endswith("a" * 32 + "  SUCCESSFUL")


# ---- end to end: a real tasks_server and two web processes -----------------------------------

# A "web process": the same settings (SCHEDULE included), enqueues and reads results for a while.
WEB = r"""
import sys, time
import django
django.setup()
from django_tasks_shared import wait_all
from testproject import tasks
until = time.time() + float(sys.argv[1])
n = 0
while time.time() < until:
    results = [tasks.add.enqueue(n, i) for i in range(5)]
    wait_all(results, timeout=10)
    assert [r.return_value for r in results] == [n + i for i in range(5)]
    n += 1
    time.sleep(0.05)
print(n)
"""


def read_ledger(path):
    try:
        with open(path) as f:
            return [(float(t), rid) for t, rid in (line.split() for line in f)]
    except FileNotFoundError:
        return []


def test_every_second_for_five_seconds_across_two_web_processes_runs_five_times():
    ledger = f"{temp_dir()}/ledger"
    # MAX_RESULTS: the web processes' results must not evict the schedule's (checked below)
    options = {"WORKERS": 2, "MAX_RESULTS": 50000,
               "SCHEDULE": {"tick": {"task": LEDGER, "every": 1, "args": [ledger]}}}
    srv = ServerProcess(options=options)
    webs = []
    try:
        srv.wait_ready()
        env = child_env(srv.address, options)
        webs = [subprocess.Popen([sys.executable, "-c", WEB, "6.5"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
        with srv.settings():  # workers ready, so a run's ledger line follows its due time
            wait_until(lambda: all(w["ready_at"] for w in task_backends["default"].health()[
                "workers"]), timeout=20, message="both workers ready")
        time.sleep(0.5)  # the web processes are up and enqueueing
        start = time.time()
        time.sleep(5.0)
        end = time.time()
        outputs = [web.communicate(timeout=30) for web in webs]
        for web, (out, err) in zip(webs, outputs, strict=True):
            assert web.returncode == 0, err
            assert int(out) > 5  # each really used the backend the whole time
        runs = read_ledger(ledger)
        window = [t for t, _ in runs if start <= t <= end]
        assert 4 <= len(window) <= 6, runs
        ids = [rid for _, rid in runs]
        assert len(ids) == len(set(ids))  # every run is its own result
        with srv.settings():
            results = [tasks.ledger.get_result(rid) for rid in ids]
        # none doubled: the scheduler enqueued one run per second, never two close together
        enqueued = sorted(r.enqueued_at.timestamp() for r in results)
        gaps = [b - a for a, b in zip(enqueued, enqueued[1:], strict=False)]
        assert all(0.9 < gap < 1.1 for gap in gaps), gaps
        assert all(r.return_value == ledger for r in results)
        with srv.settings():
            doc = health.report(task_backends["default"].health())
        (item,) = doc["schedules"]
        assert item["name"] == "tick" and item["when"] == "every 1 s"
        assert item["last_run"]["id"] in ids
        assert item["last_run"]["status"] in ("READY", "RUNNING", "SUCCESSFUL")
        assert item["next_run"] > item["last_run"]["due"]
        human = subprocess.run([sys.executable, MANAGE, "tasks_health"], env=env,
                               capture_output=True, text=True, timeout=30)
        assert "schedules 1" in human.stdout and "every 1 s" in human.stdout
    finally:
        for web in webs:
            stop_process(web)
        srv.stop()


def test_unknown_task_path_fails_start_up_naming_the_entry():
    options = {"SCHEDULE": {"nightly": {"task": "testproject.tasks.nope", "cron": "0 3 * * *"}}}
    address = short_socket_path()
    env = child_env(address, options)
    # The system check (run by tasks_server and by `manage.py check`)
    check = subprocess.run([sys.executable, MANAGE, "check"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 1
    assert "django_tasks_shared.E001" in check.stderr
    assert "OPTIONS['SCHEDULE']['nightly']: task 'testproject.tasks.nope' cannot be imported" \
        in check.stderr
    # tasks_server with the checks skipped still refuses, before listening
    server = subprocess.run([sys.executable, MANAGE, "tasks_server", "--skip-checks"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert server.returncode == 1
    assert "OPTIONS['SCHEDULE']['nightly']: task 'testproject.tasks.nope' cannot be" \
        in server.stderr
    assert ping(address) is None


LAUNCH = r"""
import django
django.setup()
from django.tasks.exceptions import InvalidTaskBackend
from testproject import tasks
try:
    tasks.add.enqueue(1, 2)
except InvalidTaskBackend as exc:
    print(exc)
"""


def test_a_launched_server_does_not_start_with_a_bad_schedule_task():
    address = short_socket_path()
    options = {"AUTOSTART": True,
               "SCHEDULE": {"beat": {"task": "testproject.tasks.add.missing", "every": 5}}}
    run = subprocess.run([sys.executable, "-c", LAUNCH], env=child_env(address, options),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "TASKS['default']: the task server was not started: OPTIONS['SCHEDULE']['beat']: " \
           "task 'testproject.tasks.add.missing' cannot be imported" in run.stdout
    assert ping(address) is None
    with tasks_settings(address, {"SCHEDULE": {"beat": {"task": "testproject.tasks.add"}}}):
        with pytest.raises(InvalidTaskBackend, match=r"\['beat'\]: give exactly one of"):
            task_backends["default"]


def test_a_bad_cron_stops_tasks_server_at_start_up():
    options = {"SCHEDULE": {"nightly": {"task": LEDGER, "cron": "0 3 * *"}}}
    server = subprocess.run([sys.executable, MANAGE, "tasks_server"],
                            env=child_env(short_socket_path(), options),
                            capture_output=True, text=True, timeout=60)
    assert server.returncode != 0
    assert "OPTIONS['SCHEDULE']['nightly']: bad cron expression '0 3 * *'" in server.stderr


def test_with_a_state_dir_the_last_run_survives_a_restart_and_a_missed_slot_runs_once():
    directory = temp_dir()
    ledger = f"{directory}/ledger"
    options = {"WORKERS": 1, "STATE_DIR": f"{directory}/state",
               "SCHEDULE": {"tick": {"task": LEDGER, "every": 1, "args": [ledger]}}}

    def schedule(srv):
        client = srv.client()  # a new connection each time: the server restarts in between
        try:
            return client.call("health")["schedules"][0]
        finally:
            client.close()

    srv = ServerProcess(options=options)
    try:
        srv.wait_ready()
        before = wait_until(lambda: schedule(srv)["last_run"], timeout=10,
                            message="a first scheduled run")
    finally:
        srv.stop()  # SIGTERM: the final snapshot keeps store.durable
    stopped = time.time()
    time.sleep(3.2)  # three due times pass while no server runs
    srv = ServerProcess(options=options, address=srv.address)
    try:
        srv.wait_ready()
        client = srv.client()
        try:
            started_at = client.call("health")["server"]["started_at"]
        finally:
            client.close()
        with srv.settings():
            wait_until(lambda: len(read_ledger(ledger)) >= 3, timeout=15,
                       message="the ledger lines of both servers' runs")
            enqueued = sorted(tasks.ledger.get_result(rid).enqueued_at.timestamp()
                              for _, rid in read_ledger(ledger))
        later = [t for t in enqueued if t > stopped]
        # The missed slots gave ONE run, at start-up (a server without the note would first run
        # a whole interval after it started), then the normal rhythm: no burst of catch-ups.
        assert later[0] - started_at < 0.9, (started_at, enqueued)
        assert later[1] - later[0] == pytest.approx(1.0, abs=0.1), enqueued
        assert before["id"] in [rid for _, rid in read_ledger(ledger)]
    finally:
        srv.stop()
