"""The Django task backends: every operation is one round trip to the shared server.

    Task.enqueue -> validate -> JSON check -> record (+ retry policy: @retry over
                    OPTIONS["RETRY"]) -> client.call("enqueue") -> TaskResult
    get_result   -> client.call("get")  -> record -> TaskResult   (TaskResultDoesNotExist if None)
    wait()       -> client.call("wait") -> blocks in the server until finished or timeout
    wait_all()   -> "wait" on the last of a batch, then one "get_many" for all of it
    wait()/wait_all() on ANOTHER backend (django-tasks-db...) -> poll result.refresh(), growing

Django builds a backend instance per thread, so __init__ only reads a cached Config and the
module-level StoreClient of its alias (one connection per process and thread, fork-aware).
"""

import ipaddress
import json
import secrets
import time

from django.conf import settings
from django.core import checks
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TASK_REFRESH_ATTRS
from django.tasks.exceptions import InvalidTaskBackend, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils.json import normalize_json

from . import launcher
from .client import StoreClient
from .config import ConfigError, build_config
from .exceptions import PayloadTooLarge, ServerAuthenticationError, ServerUnavailable
from .records import to_task_result, to_timestamp
from .retries import effective_policy
from .schedules import ScheduleError, resolve_tasks
from .store import FINISHED, new_record

_configs = {}   # (alias, kind, options repr, queues, secret) -> Config
_clients = {}   # (alias, address, authkey, timeout) -> StoreClient
WAIT_SLICE = 2.0  # a server-side wait stays well inside the socket timeout


def get_config(alias, params, kind):
    queues = tuple(sorted(params.get("QUEUES") or ["default"]))
    options = params.get("OPTIONS") or {}
    key = (alias, kind, repr(sorted(options.items(), key=lambda kv: str(kv[0]))), queues,
           settings.SECRET_KEY, settings.SETTINGS_MODULE, settings.TIME_ZONE)
    config = _configs.get(key)
    if config is None:
        try:
            config = build_config(alias, options, kind=kind, queues=queues,
                                  secret_key=settings.SECRET_KEY,
                                  settings_module=settings.SETTINGS_MODULE,
                                  time_zone=settings.TIME_ZONE)
        except ConfigError as exc:
            raise InvalidTaskBackend(f"TASKS[{alias!r}]: {exc}") from None
        _configs[key] = config
    return config


def get_client(config):
    # The authkey is in the key: changed settings must not reuse a connection made with another.
    key = (config.alias, config.address, config.authkey, config.connect_timeout)
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = StoreClient(
            config.address, config.authkey, timeout=config.connect_timeout)
    return client


class SharedBackend(BaseTaskBackend):
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True
    supports_metadata = True  # Django's coming metadata API; set_progress() on 6.x
    kind = "process"

    def __init__(self, alias, params):
        super().__init__(alias, params)
        self.config = get_config(alias, params, self.kind)
        self.client = get_client(self.config)

    def call(self, method, *args):
        """One round trip; in embedded/AUTOSTART mode a missing server is started first."""
        try:
            return self.client.call(method, *args)
        except ServerAuthenticationError:
            raise
        except ServerUnavailable:
            if not self.config.can_start:
                raise
        try:
            launcher.ensure_server(self.config)
        except ScheduleError as exc:  # a schedule's task does not import: the server can't start
            raise InvalidTaskBackend(f"TASKS[{self.alias!r}]: the task server was not started: "
                                     f"{exc}") from None
        return self.client.call(method, *args)

    def enqueue(self, task, args, kwargs):
        self.validate_task(task)
        args, kwargs = _json_arguments(task, args, kwargs, self.config.max_payload)
        record = new_record(
            id=secrets.token_hex(16), task=task.module_path, args=args, kwargs=kwargs,
            priority=task.priority, queue=task.queue_name, run_after=to_timestamp(task.run_after),
            takes_context=task.takes_context, backend=self.alias,
            retry=effective_policy(task.func, self.config.retry))
        if getattr(task, "metadata", None):  # Task.using(metadata=...) of a later Django
            record["metadata"] = normalize_json(dict(task.metadata))
        record["enqueued_at"] = self.call("enqueue", record)
        result = to_task_result(record, task)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id):
        record = self.call("get", result_id)
        if record is None:
            raise TaskResultDoesNotExist(result_id)
        return to_task_result(record)

    def wait(self, result_id, timeout):
        """The record once finished (or as it stands when `timeout` runs out)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            # Each server-side wait stays well inside the socket timeout.
            slice_ = min(WAIT_SLICE, self.config.connect_timeout / 2)
            record = self.call("wait", result_id, max(0.0, min(remaining, slice_)))
            if record is None:
                raise TaskResultDoesNotExist(result_id)
            if record["status"] in FINISHED or remaining <= slice_:
                return record

    def save_metadata(self, task_result, raw_metadata):
        """Django's coming backend hook: replace a running task's metadata (one round trip)."""
        return self.call("save_metadata", task_result.id, normalize_json(dict(raw_metadata)),
                         True)

    def health(self):
        """The server's health snapshot; never starts a server."""
        return self.client.call("health")

    def check(self, **kwargs):
        messages = []
        address = self.config.address
        if isinstance(address, tuple) and not _is_loopback(address[0]):
            messages.append(checks.Warning(
                f"TASKS[{self.alias!r}] ADDRESS {self.config.address_text} is not loopback: "
                "anyone who can reach it and knows the authkey can run code in the server.",
                hint="Prefer a unix socket path, or bind to 127.0.0.1 behind a firewall.",
                id="django_tasks_shared.W001"))
        if self.config.schedules:
            _, errors = resolve_tasks(self.config.schedules, self.config.queues)
            messages += [checks.Error(
                f"TASKS[{self.alias!r}] {error}",
                hint="The task server enqueues each SCHEDULE entry by its dotted path.",
                id="django_tasks_shared.E001") for error in errors]
        return messages


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def _json_arguments(task, args, kwargs, max_payload=None):
    """Arguments exactly as a worker will see them, or a TypeError naming the culprit (or
    PayloadTooLarge over MAX_PAYLOAD bytes of JSON)."""
    try:
        args, kwargs = normalize_json(list(args)), normalize_json(dict(kwargs))
        size = len(json.dumps([args, kwargs]))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"arguments of task {task.module_path!r} must be JSON-serializable ({exc}); nothing "
            f"was enqueued. Pass plain data (ids, strings, numbers, lists, dicts), not model "
            f"instances or objects.") from None
    if max_payload is not None and size > max_payload:
        raise PayloadTooLarge(
            f"arguments of task {task.module_path!r} take {size} bytes as JSON, over "
            f"MAX_PAYLOAD={max_payload}; nothing was enqueued. Pass a reference to the data (a "
            f"file path, a database id) instead, or raise OPTIONS['MAX_PAYLOAD'].")
    return args, kwargs


class ProcessPoolBackend(SharedBackend):
    """WORKERS processes (default: CPU count), each running THREADS threads (default 1)."""

    kind = "process"


class ThreadPoolBackend(SharedBackend):
    """One worker process running THREADS threads (default min(32, CPUs + 4)): I/O-bound tasks."""

    kind = "thread"


def _refresh_in_place(result, record):
    """What TaskResult.refresh() does, from a record we already have."""
    fresh = to_task_result(record, result.task)
    for attr in TASK_REFRESH_ATTRS:
        object.__setattr__(result, attr, getattr(fresh, attr))


POLL_FIRST, POLL_FACTOR, POLL_MAX = 0.05, 1.5, 1.0  # seconds: the fallback's growing interval


def _other_backend(alias):
    """The backend of `alias` if it is NOT ours (then wait/wait_all poll it), else None."""
    from django.tasks import task_backends

    backend = task_backends[alias]
    if isinstance(backend, SharedBackend):
        return None
    if not backend.supports_get_result:
        raise NotImplementedError(
            f"wait() / wait_all() need a task backend that can fetch results; TASKS[{alias!r}] "
            f"({type(backend).__module__}.{type(backend).__qualname__}) has "
            f"supports_get_result = False. Use a backend that stores results, or don't wait.")
    return backend


def _poll(results, deadline, timeout):
    """Refresh each unfinished result until all are finished: POLL_FIRST s between rounds at
    first, growing by POLL_FACTOR up to POLL_MAX s (a quick task is seen quickly, a long one
    costs few queries). TimeoutError at the deadline."""
    interval = POLL_FIRST
    pending = list(results)
    while True:
        for result in pending:
            result.refresh()
        pending = [result for result in pending if not result.is_finished]
        remaining = deadline - time.monotonic()
        if not pending:
            return
        if remaining <= 0:
            raise TimeoutError(f"{len(pending)} task result(s) still unfinished after "
                               f"{timeout} s, e.g. {pending[0].id} ({pending[0].status})")
        time.sleep(min(interval, remaining))
        interval = min(interval * POLL_FACTOR, POLL_MAX)


def wait(result, timeout=30.0):
    """Block until `result` (a TaskResult) is finished; refreshes it in place and returns it.

    On our backends the server holds the call until the task finishes: no polling. On any
    other backend that supports get_result (django-tasks-db, django-tasks-rq, ...) it falls
    back to polling `result.refresh()`, every 0.05 s at first, the interval growing 1.5x per
    round up to 1 s. Raises TimeoutError if it is still unfinished after `timeout` seconds,
    NotImplementedError on a backend that cannot fetch results.
    """
    from django.tasks import task_backends

    if _other_backend(result.backend) is not None:
        _poll([result], time.monotonic() + timeout, timeout)
        return result
    backend = task_backends[result.backend]
    record = backend.wait(result.id, timeout)
    _refresh_in_place(result, record)
    if not result.is_finished:
        raise TimeoutError(f"task result {result.id} is still {result.status} after {timeout} s")
    return result


def cancel(result, backend=None):
    """Cancel a pending or running task: it ends FAILED with `exceptions.TaskCancelled`.

    `result` is a TaskResult, or a result id with `backend` naming its backend alias (default
    "default"). Returns True if a task was cancelled; False if it had already finished or is
    unknown (nothing changes). A pending task never runs; a running one has its worker process
    stopped (its sibling tasks on that worker end WorkerLost) and the worker is replaced. A
    TaskResult passed in is refreshed in place. One round trip; never starts a server.
    """
    from django.tasks import task_backends

    if isinstance(result, str):
        task_id, alias, result = result, backend or "default", None
    elif hasattr(result, "id") and hasattr(result, "backend"):
        task_id, alias = result.id, backend or result.backend
    else:
        raise TypeError(f"cancel() takes a TaskResult or a result id, not "
                        f"{type(result).__name__}")
    shared = task_backends[alias]
    if not isinstance(shared, SharedBackend):
        raise TypeError(f"TASKS[{alias!r}] is {type(shared).__name__}, not a django-tasks-shared "
                        f"backend: it cannot cancel tasks")
    cancelled = shared.client.call("cancel", task_id)
    if result is not None:
        record = shared.client.call("get", task_id)
        if record is not None:
            _refresh_in_place(result, record)
    return cancelled


WAIT_ALL_CHUNK = 500  # results fetched per get_many in wait_all


def wait_all(results, timeout=30.0):
    """Block until every TaskResult in `results` is finished; refreshes each in place.

    A few round trips for the whole batch instead of one per result: per chunk of results (of
    one backend), the server waits for the LAST unfinished one (tasks of equal priority start
    in FIFO order, so by then nearly all are done), then ONE `get_many` fetches all of them;
    any still unfinished go round again. Results of another backend that supports get_result
    are polled instead, as `wait()` does (one `refresh()` per unfinished result per round, the
    interval growing from 0.05 s to 1 s). Raises TimeoutError when `timeout` runs out,
    TaskResultDoesNotExist for an unknown or evicted id, NotImplementedError on a backend that
    cannot fetch results. Returns `results`.
    """
    from django.tasks import task_backends

    deadline = time.monotonic() + timeout
    groups = {}
    for result in results:
        groups.setdefault(result.backend, []).append(result)
    for alias, group in groups.items():
        if _other_backend(alias) is not None:
            _poll(group, deadline, timeout)
            continue
        backend = task_backends[alias]
        for start in range(0, len(group), WAIT_ALL_CHUNK):
            pending = group[start:start + WAIT_ALL_CHUNK]
            while pending:
                remaining = deadline - time.monotonic()
                record = backend.wait(pending[-1].id, max(0.0, remaining))
                if len(pending) == 1:
                    records = [record]
                else:
                    records = backend.call("get_many", [r.id for r in pending])
                still = []
                for result, record in zip(pending, records, strict=True):
                    if record is None:
                        raise TaskResultDoesNotExist(result.id)
                    _refresh_in_place(result, record)
                    if not result.is_finished:
                        still.append(result)
                pending = still
                if pending and time.monotonic() >= deadline:
                    raise TimeoutError(f"{len(pending)} task result(s) still unfinished after "
                                       f"{timeout} s, e.g. {pending[0].id}")
    return results


__all__ = ["ProcessPoolBackend", "ThreadPoolBackend", "cancel", "wait", "wait_all"]
