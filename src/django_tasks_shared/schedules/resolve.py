"""Each SCHEDULE entry's task imported and completed, where Django is set up: `tasks_server`
start-up, a launcher about to start a server, the system check.

    Config.schedules (validated, entries.py) -> resolve_tasks(): the path names a Task; its own
    priority, queue and retry policy fill what the entry left out (the server never imports the
    task) -> resolve_config(): the Config a server starts with, or ScheduleError naming every
    bad entry
"""

import dataclasses

from django.utils.module_loading import import_string

from ..client.retry import effective_policy
from ..client.workflows import fields as workflow_fields
from .entries import ScheduleError


def resolve_tasks(entries, queues, retry_defaults=None):
    """Import each entry's task (Django must be set up): the path must name a Task; the task's
    own priority and queue_name fill in what the entry left out, and its retry policy (@retry
    over `retry_defaults`, OPTIONS["RETRY"]) goes into the entry, since the server that enqueues
    it never imports the task. Returns (entries, errors): completed entries, and one message per
    bad entry (naming it). A @unique / @limit task gets its record fields ("workflow"),
    computed here from the entry's arguments."""
    resolved, errors = [], []
    for entry in entries:
        where = f"OPTIONS['SCHEDULE'][{entry['name']!r}]"
        try:
            task = import_string(entry["task"])
        except Exception as exc:  # ImportError, or the module itself failed to import
            errors.append(f"{where}: task {entry['task']!r} cannot be imported "
                          f"({type(exc).__name__}: {exc}); fix the dotted path.")
            continue
        if not hasattr(task, "using") or not hasattr(task, "module_path"):
            errors.append(f"{where}: {entry['task']!r} is not a Task; decorate the function "
                          "with @django.tasks.task.")
            continue
        queue = entry["queue_name"] or task.queue_name
        if queue not in queues:
            errors.append(f"{where}: the task's queue {queue!r} is not in this backend's "
                          f"QUEUES ({', '.join(map(repr, queues))}); add it there or set "
                          "'queue_name'.")
            continue
        try:  # @unique / @limit keys of its (fixed) arguments: the server cannot compute them
            flow = workflow_fields(task, entry["args"], entry["kwargs"]) or {}
        except TypeError as exc:
            errors.append(f"{where}: {exc}")
            continue
        resolved.append(dict(
            entry, queue_name=queue, takes_context=bool(task.takes_context),
            priority=task.priority if entry["priority"] is None else entry["priority"],
            retry=effective_policy(task.func, retry_defaults), workflow=flow))
    return tuple(resolved), errors


def resolve_config(config):
    """`config` with its schedules resolved (see resolve_tasks), or ScheduleError naming every
    bad entry. Called where a server is about to start with these schedules."""
    if not config.schedules:
        return config
    entries, errors = resolve_tasks(config.schedules, config.queues, config.retry)
    if errors:
        raise ScheduleError("; ".join(errors))
    return dataclasses.replace(config, schedules=entries)
