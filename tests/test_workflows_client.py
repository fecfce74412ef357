"""The client side of workflows, in process: the decorators' checks, the keys a record gets,
OPTIONS["POOLS"] validation, and the pool rules the store applies to a worker."""

import pytest
from django.tasks import task

from django_tasks_shared import limit, unique
from django_tasks_shared.client import workflows
from django_tasks_shared.client.options import ConfigError, build_config, unserved_queues
from django_tasks_shared.protocol.records import new_record
from django_tasks_shared.protocol.status import STOP
from django_tasks_shared.store import TaskStore
from django_tasks_shared.store.longpoll import NOTHING


@pytest.mark.timeout(10)
def test_decorators_refuse_bad_arguments_at_import_time():
    with pytest.raises(ValueError, match="'finished' or 'started'"):
        unique(until="done")
    with pytest.raises(TypeError, match="callable"):
        unique(key="user")
    with pytest.raises(ValueError, match="concurrency=N, rate="):
        limit()
    with pytest.raises(ValueError, match="whole number >= 1"):
        limit(concurrency=0)
    for bad in ("10", "10/d", "0/s", "x/m", 10):
        with pytest.raises(ValueError, match="rate"):
            limit(rate=bad)


def _task(func):
    return task(func)  # the test settings' default backend is ours


def keyed(user_id, full=False):
    return user_id


def ours(user_id, full=False):
    return user_id


@pytest.mark.timeout(10)
def test_the_record_fields_and_their_keys():
    plain = _task(ours)
    assert workflows.fields(plain, [1], {}) is None  # a plain task: the usual path

    marked = unique()(limit(rate="30/m", key=lambda user_id, **kw: f"u{user_id}")(keyed))
    t = _task(marked)
    out = workflows.fields(t, [7], {"full": True})
    path = t.module_path
    assert out["unique"] == {"key": f'{path}:[[7],{{"full":true}}]', "until": "finished"}
    assert out["limit"] == {"key": f"{path}:u7", "concurrency": None, "rate": [30, 60.0]}
    long = workflows.fields(t, ["x" * 500], {})["unique"]["key"]
    assert long.startswith(f"{path}:sha256:") and len(long) < 150

    def broken(*args, **kwargs):
        raise LookupError("no such user")

    bad = _task(unique(key=broken)(lambda_target))
    with pytest.raises(TypeError, match="raised LookupError: no such user; nothing was enqueued"):
        workflows.fields(bad, [1], {})
    wrong = _task(unique(key=lambda *a, **k: ["a list"])(lambda_target2))
    with pytest.raises(TypeError, match="must return a str or an int"):
        workflows.fields(wrong, [1], {})


def lambda_target(x):
    return x


def lambda_target2(x):
    return x


def _config(options, kind="process", queues=("default", "emails", "reports")):
    return build_config("default", options, kind=kind, queues=queues,
                        secret_key="s" * 40, settings_module="testproject.settings")


@pytest.mark.timeout(10)
def test_pools_are_validated_and_sized():
    config = _config({"THREADS": 2, "TIME_LIMIT": 30, "POOLS": {
        "web": {"queues": ["default", "emails"], "workers": 3},
        "reports": {"queues": ["reports"], "TIME_LIMIT": 3600, "MAX_TASK_MEMORY": 2048}}})
    assert config.workers == 4
    web, reports = config.pools
    assert (web["threads"], web["time_limit"], reports["workers"], reports["time_limit"],
            reports["max_task_memory"]) == (2, 30.0, 1, 3600.0, 2048)
    assert unserved_queues(config) == []
    assert unserved_queues(_config({"POOLS": {"web": {"queues": ["default"]}}})) == [
        "emails", "reports"]
    for options, message in (
        ({"WORKERS": 2, "POOLS": {"a": {"queues": ["default"]}}}, r"not OPTIONS\['WORKERS'\]"),
        ({"POOLS": {"a": {"queues": "default"}}}, "non-empty list"),
        ({"POOLS": {"a": {"queues": ["nope"]}}}, "'nope' not in this backend's QUEUES"),
        ({"POOLS": {"a": {"queues": ["default"], "workrs": 2}}}, "unknown key"),
        ({"POOLS": {"a": {"queues": ["default"], "TIME_LIMIT": -1}}},
         r"OPTIONS\['POOLS'\]\['a'\]\['TIME_LIMIT'\] must be a number of seconds > 0, "
         r"got -1\. For no limit"),
        ({"POOLS": {"a": {"queues": ["default"], "TIME_LIMIT": 0}}},
         r"\['TIME_LIMIT'\] must be a number of seconds > 0, got 0: 0 would end every task"),
        ({"TIME_LIMIT": 0}, r"OPTIONS\['TIME_LIMIT'\] must be a number of seconds > 0, got 0"),
        ({"TIME_LIMIT": "30"}, r"OPTIONS\['TIME_LIMIT'\] must be a number of seconds > 0, "
                               r"got '30'"),
        ({"POOLS": {"bad name": {"queues": ["default"]}}}, "identifiers"),
        ({"POOLS": {}}, "must be a dict"),
    ):
        with pytest.raises(ConfigError, match=message):
            _config(options)
    with pytest.raises(ConfigError, match="ThreadPoolBackend pool runs one worker process"):
        _config({"POOLS": {"a": {"queues": ["default"], "workers": 2}}}, kind="thread")


@pytest.mark.timeout(10)
def test_a_worker_takes_only_its_pools_queues_and_retires_at_its_pools_count():
    store = TaskStore()
    store.register_worker("web", pid=1, pool="web", queues=["default"], max_tasks=2)
    store.register_worker("rep", pid=1, pool="reports", queues=["reports"])
    for i, queue in enumerate(["reports", "default", "reports", "default", "default"]):
        store.enqueue(new_record(id=f"t{i}", task="a.b", args=[], kwargs={}, queue=queue))
    got = store.polls.claim_now("web", None)
    assert got["id"] == "t1"           # t0 is first in FIFO order, but of another pool's queue
    got = store.polls.claim_now("web", {"id": "t1", "status": "SUCCESSFUL",
                                        "finished_at": None})
    assert got["id"] == "t3"
    assert store.polls.claim_now("web", {"id": "t3", "status": "SUCCESSFUL",
                                         "finished_at": None}) == STOP  # its pool's 2 tasks
    assert store.polls.claim_now("rep", None)["id"] == "t0"
    assert store.polls.claim_now("rep", {"id": "t0", "status": "SUCCESSFUL",
                                         "finished_at": None})["id"] == "t2"
    assert store.polls.claim_now("rep", {"id": "t2", "status": "SUCCESSFUL",
                                         "finished_at": None}) is NOTHING  # t4 is not its queue
