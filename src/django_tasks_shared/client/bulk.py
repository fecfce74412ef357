"""`enqueue_many(task, [(args, kwargs), ...])`: many tasks in one round trip per chunk, all or
nothing (as RQ's `Queue.enqueue_many`).

    enqueue_many(task, calls)
      backend not ours ──> [task.enqueue(*args, **kwargs) for each]: Django's API, one by one
                           (no all-or-nothing there: a failure leaves the earlier ones queued)
      ours ──> the task validated once; every call's arguments checked (JSON, MAX_PAYLOAD) and
               its record built BEFORE anything is sent: a bad one raises, naming its index,
               and nothing is stored
           ──> chunks of at most CHUNK records (and half the server's request limit):
               "enqueue_many"(records, batch, index, final) -- one round trip each; the server
               stages the chunks and stores the whole call at the last one, or nothing
               (QueueFull, a draining server, an unknown after() parent, a refused STATE_DIR
               write): store/bulk.py
           ──> a TaskResult per call, in order; task_enqueued sent for each, as enqueue() does
    @unique / @limit tasks: each record gets its fields as enqueue() computes them; a call whose
        unique key is held (by an earlier task, or an earlier call of this list) gets the
        holder's result and no task_enqueued, as enqueue() does. after(): not here (after()
        enqueues one task; wait for a group with after(results, callback)).
    A server of 0.2 or older (no "enqueue_many"): enqueue() in a loop, as on other backends.
"""

import os
import secrets
from typing import Any, cast

from django.tasks.base import Task
from django.tasks.signals import task_enqueued
from django.utils.json import normalize_json

from ..exceptions import PayloadTooLarge, ServerUnavailable
from ..protocol.records import new_record
from .results import converter, to_task_result, to_timestamp
from .retry import effective_policy
from .workflows import ATTRIBUTE
from .workflows import fields as workflow_fields

CHUNK = 500  # records per round trip: the server stores a chunk's records in one lock hold


def enqueue_many(task, calls):
    """Enqueue `task` once per (args, kwargs) of `calls`; returns their TaskResults in order.

    On a django-tasks-shared backend: one round trip per chunk of 500, and all or nothing:
    bad arguments (not JSON, over MAX_PAYLOAD), QueueFull (the whole list must fit under
    MAX_QUEUE), a server that is shutting down or cannot write its STATE_DIR store nothing.
    On any other backend: `task.enqueue(*args, **kwargs)` for each, one after another (a
    failure there leaves the earlier tasks enqueued)."""
    if not isinstance(task, Task):
        raise TypeError(f"enqueue_many() takes a Task (a function decorated with @task), got "
                        f"{task!r}.")
    calls = [_call(i, call) for i, call in enumerate(calls)]
    from .backend import SharedBackend

    backend = task.get_backend()
    if not isinstance(backend, SharedBackend):
        return [task.enqueue(*args, **kwargs) for args, kwargs in calls]
    return _enqueue_shared(backend, task, calls)


def _call(index, call):
    try:
        args, kwargs = call
    except (TypeError, ValueError):
        raise TypeError(f"enqueue_many(): call {index} must be an (args, kwargs) pair, got "
                        f"{call!r}; nothing was enqueued.") from None
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise TypeError(f"enqueue_many(): call {index} must be an (args, kwargs) pair of a "
                        f"list or tuple and a dict, got {call!r}; nothing was enqueued.")
    return args, kwargs


def _enqueue_shared(backend, task, calls):
    from .backend import _json_arguments, _with_task_id

    backend.validate_task(task)
    config = backend.config
    retry = effective_policy(task.func, config.retry)
    metadata = getattr(task, "metadata", None)
    metadata = cast(dict, normalize_json(dict(metadata))) if metadata else None
    # Every record is this one with its own id and arguments (its inner lists are never
    # mutated: they are pickled, and TaskResults get their own).
    base = new_record(id="", task=task.module_path, args=[], kwargs={}, priority=task.priority,
                      queue=task.queue_name, run_after=to_timestamp(task.run_after),
                      takes_context=task.takes_context, backend=backend.alias, retry=retry)
    if metadata:
        base["metadata"] = metadata
    marked = getattr(task.func, ATTRIBUTE, None) is not None  # @unique / @limit
    ids = os.urandom(16 * len(calls)).hex()  # one system call, 32 hex digits per task
    records, sizes = [], []
    for index, (args, kwargs) in enumerate(calls):
        try:
            args, kwargs, size = _json_arguments(task, args, kwargs, config.max_payload,
                                                 with_size=True)
        except (TypeError, ValueError, PayloadTooLarge) as exc:
            exc.args = (f"enqueue_many(): call {index}: {exc.args[0]}", *exc.args[1:])
            raise
        record = base.copy()
        record["id"], record["args"], record["kwargs"] = ids[32 * index:32 * index + 32], \
            args, kwargs
        if marked:
            flow = workflow_fields(task, args, kwargs, with_after=False)
            if flow:
                record.update(flow)  # type: ignore[typeddict-item]
        records.append(record)
        sizes.append(size + 400)  # its JSON arguments and the rest of a pickled record
    if not records:
        return []
    # The TaskResults of a plain task are built before the round trips, while the workers are
    # idle (its enqueued_at, the server's, is set once stored, as Django's refresh() sets
    # fields); a @unique / @limit task's come from the records the server answers with.
    early = None if marked else [to_task_result(record, task) for record in records]
    try:
        standing = _send(backend, records, sizes, config.max_payload)
    except ServerUnavailable as exc:
        raise _with_task_id(exc, task, records[0]["id"]) from None
    except AttributeError as exc:
        if "not exposed" not in str(exc):
            raise
        # A server of 0.2 or older: one enqueue() each, as on another backend.
        return [task.enqueue(*args, **kwargs) for args, kwargs in calls]
    sender = type(backend)
    if early is not None:
        convert = converter()
        for result, stood in zip(early, standing, strict=True):
            object.__setattr__(result, "enqueued_at", convert(stood))
            task_enqueued.send(sender, task_result=result)
        return early
    results = []
    for record, stood in zip(records, standing, strict=True):
        if isinstance(stood, dict):  # a workflow task: the record that stands for the call
            if stood["id"] != record["id"]:  # a unique key's holder: nothing new stored
                results.append(to_task_result(stood))
                continue
            result = to_task_result(stood, task)
        else:
            record["enqueued_at"] = stood
            result = to_task_result(record, task)
        task_enqueued.send(sender, task_result=result)
        results.append(result)
    return results


def _send(backend, records, sizes, max_payload):
    """The chunks, one round trip each; the last one's reply stands for the whole call."""
    batch = secrets.token_hex(8)
    # the server drops a request over MAX_PAYLOAD + 1 MiB (server/process.py): half of that
    budget = (max_payload + (1 << 20)) // 2
    chunks: list[list] = [[]]
    used = 0
    for record, size in zip(records, sizes, strict=True):
        if chunks[-1] and (len(chunks[-1]) >= CHUNK or used + size > budget):
            chunks.append([])
            used = 0
        chunks[-1].append(record)
        used += size
    got: Any = None
    for index, chunk in enumerate(chunks):
        got = backend.call("enqueue_many", chunk, batch, index, index == len(chunks) - 1)
    return got
