"""The Django task backends: every operation is one round trip to the shared server.

    Task.enqueue -> validate -> JSON check -> record (+ retry policy: @retry over
                    OPTIONS["RETRY"]) -> client.call("enqueue") -> TaskResult
                    @unique / @limit / after(): + their fields -> "enqueue_workflow", which
                    returns the record standing for the call (workflows.py)
    get_result   -> client.call("get")  -> record -> TaskResult   (TaskResultDoesNotExist if None)
    wait(id)     -> client.call("wait") -> blocks in the server until finished or timeout
                    (the module-level wait / wait_all / cancel: waiting.py)

Django builds a backend instance per thread, so __init__ only reads a cached Config and the
module-level StoreClient of its alias (one connection per process and thread, fork-aware).
"""

import ipaddress
import json
import logging
import os
import secrets
import sys
import time
from typing import cast

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.exceptions import InvalidTask, InvalidTaskBackend, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils.json import normalize_json

from ..exceptions import (
    PayloadTooLarge,
    ServerAuthenticationError,
    ServerStalled,
    ServerUnavailable,
)
from ..protocol.config import Config
from ..protocol.paths import UnsafePath
from ..protocol.records import new_record
from ..protocol.status import FINISHED
from ..schedules.entries import ScheduleError
from ..schedules.resolve import resolve_tasks
from . import launcher
from .connection import StoreClient
from .options import ConfigError, build_config, unserved_queues
from .results import to_task_result, to_timestamp
from .retry import effective_policy
from .workflows import enqueue_record
from .workflows import fields as workflow_fields

_configs: dict[tuple, Config] = {}  # (alias, kind, options repr, queues, secret...) -> Config
_clients: dict[tuple, StoreClient] = {}  # (alias, address, authkey, timeout) -> StoreClient
# Backends built directly (`ThreadPoolBackend(alias="adhoc", params={})`), by alias: Django's
# registry (task_backends) does not know them, so wait() / cancel() look here.
direct_backends: dict[str, "SharedBackend"] = {}
WAIT_SLICE = 2.0  # a server-side wait stays well inside the socket timeout
logger = logging.getLogger("django_tasks_shared")
_warned_app = False
APP_HINT = ('add "django_tasks_shared" to INSTALLED_APPS: the commands tasks_server, '
            'tasks_health and tasks_reload and the web page need it (the backend runs without it)')


def settings_module():
    """The module worker processes load Django from. `settings.SETTINGS_MODULE` is None under
    override_settings (any override, in any thread): the environment still names it."""
    return settings.SETTINGS_MODULE or os.environ.get("DJANGO_SETTINGS_MODULE") or None


def get_config(alias, params, kind):
    queues = tuple(sorted(params.get("QUEUES") or ["default"]))
    options = params.get("OPTIONS") or {}
    module = settings_module()
    key = (alias, kind, repr(sorted(options.items(), key=lambda kv: str(kv[0]))), queues,
           settings.SECRET_KEY, module, settings.TIME_ZONE)
    config = _configs.get(key)
    if config is None:
        try:
            config = build_config(alias, options, kind=kind, queues=queues,
                                  secret_key=settings.SECRET_KEY,
                                  settings_module=module,
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
        if alias not in (getattr(settings, "TASKS", None) or {}):
            # Built directly, as django-tasks-local's users and tests do: Django's registry
            # cannot find it by alias, wait() and cancel() can (docs/migration.md).
            direct_backends[alias] = self
        _warn_without_app()

    def call(self, method, *args):
        """One round trip; in embedded/AUTOSTART mode a missing server is started first."""
        try:
            return self.client.call(method, *args)
        except (ServerAuthenticationError, ServerStalled):
            raise  # a server is there: starting another would not help
        except ServerUnavailable as exc:
            if not self.config.can_start or exc.maybe_applied:
                raise
        try:
            launcher.ensure_server(self.config)
        except (ScheduleError, UnsafePath) as exc:  # a schedule's task does not import, a
            # file is in the way of the socket...: the server cannot start
            raise InvalidTaskBackend(f"TASKS[{self.alias!r}]: the task server was not started: "
                                     f"{exc}") from None
        return self.client.call(method, *args)

    def validate_task(self, task):
        super().validate_task(task)
        missing = getattr(task.func, "missing_task", None)
        if missing:  # the stand-in of a result whose task does not import (results.py)
            raise InvalidTask(missing)
        if task.func.__module__ == "__main__":
            # Workers are other interpreters: they import the task by its module path, and
            # `__main__` there is the worker itself. Django refuses nested functions likewise.
            raise InvalidTask(
                f"task {task.func.__qualname__!r} is defined in __main__ (the script being run),"
                f" which worker processes cannot import; move it into a module of your project "
                f"(e.g. myapp/tasks.py) and import it from there.")

    def enqueue(self, task, args=None, kwargs=None):
        """Queue `task`; `args` and `kwargs` may be None (django-tasks-local's signature)."""
        self.validate_task(task)
        args, kwargs = _json_arguments(task, args or (), kwargs or {}, self.config.max_payload)
        record = new_record(
            id=secrets.token_hex(16), task=task.module_path, args=args, kwargs=kwargs,
            priority=task.priority, queue=task.queue_name, run_after=to_timestamp(task.run_after),
            takes_context=task.takes_context, backend=self.alias,
            retry=effective_policy(task.func, self.config.retry))
        if getattr(task, "metadata", None):  # Task.using(metadata=...) of a later Django
            record["metadata"] = cast(dict, normalize_json(dict(task.metadata)))
        flow = workflow_fields(task, args, kwargs)  # None for a plain task
        try:
            if flow is not None:
                record.update(flow)  # type: ignore[typeddict-item]
                stored = enqueue_record(self, record)
                if stored["id"] != record["id"]:  # a unique key's holder: nothing new stored
                    return to_task_result(stored)
                result = to_task_result(stored, task)
            else:
                record["enqueued_at"] = self.call("enqueue", record)
                result = to_task_result(record, task)
        except ServerUnavailable as exc:
            raise _with_task_id(exc, task, record["id"])
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

    def close(self):
        """django-tasks-local's close(): release this thread's connection to the server (the
        next call makes a new one). The server, its workers and every task are untouched:
        they belong to the deployment, not to this instance. An embedded server stops with the
        process that started it."""
        self.client.close()

    def check(self, **kwargs):
        messages: list[checks.CheckMessage] = []
        if not apps.is_installed("django_tasks_shared"):
            messages.append(checks.Warning(
                f"TASKS[{self.alias!r}] uses django-tasks-shared, but django_tasks_shared is "
                "not in INSTALLED_APPS.", hint=APP_HINT[0].upper() + APP_HINT[1:] + ".",
                id="django_tasks_shared.W002"))
        options = self.options or {}
        for key in ("ADDRESS", "STATE_DIR"):
            value = options.get(key)
            if value is not None and _relative_path(value, tcp_ok=key == "ADDRESS"):
                messages.append(checks.Warning(
                    f"TASKS[{self.alias!r}] OPTIONS[{key!r}] {value!r} is a relative path: each "
                    f"process resolves it from its own working directory (here "
                    f"{os.path.abspath(os.fspath(value))}), so processes started elsewhere "
                    f"{'look for another server' if key == 'ADDRESS' else 'use another state'}.",
                    hint="Give an absolute path, e.g. built from BASE_DIR in settings.py.",
                    id="django_tasks_shared.W003"))
        address = self.config.address
        if isinstance(address, tuple) and not _is_loopback(address[0]):
            messages.append(checks.Warning(
                f"TASKS[{self.alias!r}] ADDRESS {self.config.address_text} is not loopback: "
                "anyone who can reach it and knows the authkey can run code in the server.",
                hint="Prefer a unix socket path, or bind to 127.0.0.1 behind a firewall.",
                id="django_tasks_shared.W001"))
        unserved = unserved_queues(self.config)
        if unserved:
            messages.append(checks.Error(
                f"TASKS[{self.alias!r}] QUEUES {', '.join(map(repr, unserved))} are served by "
                f"no pool of OPTIONS['POOLS']: their tasks would never run.",
                hint="Add each queue to the 'queues' of a pool, or remove it from QUEUES.",
                id="django_tasks_shared.E002"))
        if self.config.schedules:
            _, errors = resolve_tasks(self.config.schedules, self.config.queues)
            messages += [checks.Error(
                f"TASKS[{self.alias!r}] {error}",
                hint="The task server enqueues each SCHEDULE entry by its dotted path.",
                id="django_tasks_shared.E001") for error in errors]
        return messages


def _relative_path(value, tcp_ok):
    """An OPTIONS path value that each process resolves from its own working directory."""
    if not isinstance(value, (str, os.PathLike)):
        return False
    text = os.fspath(value)
    if tcp_ok and "/" not in text and ":" in text:  # host:port (parse_address)
        return False
    return bool(text) and not os.path.isabs(text)


def _warn_without_app():
    """Once per process: `manage.py check` runs the backend's checks only when something
    imported django.tasks at start-up, which our app's ready() does; without the app, say it
    here (unless SILENCED_SYSTEM_CHECKS silences W002)."""
    global _warned_app
    if _warned_app or not apps.ready:
        return
    _warned_app = True
    if not apps.is_installed("django_tasks_shared") and "django_tasks_shared.W002" not in \
            getattr(settings, "SILENCED_SYSTEM_CHECKS", ()):
        logger.warning("django-tasks-shared: %s (system check django_tasks_shared.W002).",
                       APP_HINT)


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def _with_task_id(exc, task, task_id):
    """An enqueue that got no answer: the exception names the task id, and whether the task
    may be queued (the request went out) and how to look, or that nothing was stored."""
    exc.task_id = task_id
    if exc.maybe_applied:
        note = (f" Task {task_id} ({task.module_path}) may have been queued: look with "
                f"`{task.name}.get_result({task_id!r})` (exc.task_id) once the server answers, "
                f"rather than enqueuing it again (that could run it twice).")
    else:
        note = f" Task {task_id} ({task.module_path}) was not queued."
    exc.args = (f"{exc.args[0] if exc.args else exc}{note}", *exc.args[1:])
    return exc


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
    except RecursionError:  # normalize_json and json.dumps recurse once per level
        raise ValueError(
            f"arguments of task {task.module_path!r} are nested too deeply to store as JSON "
            f"(lists or dicts inside each other beyond Python's recursion limit, "
            f"{sys.getrecursionlimit()}; or a structure that contains itself); nothing was "
            f"enqueued. Pass flatter data, or a reference to it (a file path, a database "
            f"id).") from None
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


__all__ = ["ProcessPoolBackend", "SharedBackend", "ThreadPoolBackend"]
