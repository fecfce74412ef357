"""One client process of the stress harness (started with the `spawn` method).

It enqueues its share of the plan through the public Task API, keeps at most `window` tasks in
flight, polls its own tasks with one `get_many` round trip per cycle until each is terminal, and
looks up random ids that OTHER clients enqueued (read from their id files) with `get_result`.
Everything it saw is written to `client-<n>.json` for the checker.

    plan ──Task.enqueue──> server          ids-<n>.txt  (id workload, one line per task)
    poll ──get_many(own outstanding)──>    a status per id; terminal -> final
         ──get_result(other clients' ids)─> cross observations (status, error class, time)

An enqueue that raises ServerStalled with the task id (a stall past the retry bound; the task may
be queued) is resolved as its message says: the id is looked up once the server answers; found,
it is tracked like any; not found twice, 1 s apart, the plan item is enqueued again.

Calls that poll go first through the raw client (no AUTOSTART) so that an outage is SEEN as
ServerUnavailable and counted; the retry goes through the backend, which AUTOSTARTs a server.
A task that vanished is "lost with the server" only if the server now answering started after
the task was enqueued (its `started_at` is later than the task's `enqueued_at`, one host clock);
otherwise it is reported missing, which fails the run.
"""

import json
import os
import random
import time
from collections import deque
from datetime import UTC, datetime

TERMINAL = ("SUCCESSFUL", "FAILED")
RANK = {"READY": 0, "RUNNING": 1, "SUCCESSFUL": 2, "FAILED": 2}
ENQ, DONE, LOST, SEEN_DOWN = range(4)  # per-client progress counters in the shared array


def _last_line(text):
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class Client:
    def __init__(self, params, counters):
        import django

        django.setup()
        from django.tasks import task_backends

        from stress.harness import tasks as workload_tasks

        self.p = params
        self.idx = params["idx"]
        self.counters = counters
        self.base = 4 * self.idx
        self.backend = task_backends["default"]
        self.tasks = workload_tasks
        self.rng = random.Random(params["seed"] * 1000 + self.idx)
        self.info = {}          # id -> what we know about it
        self.outstanding = {}   # id -> info, not yet final
        self.cross = []         # [id, status or None, error class or None, t before, t after]
        self.seen_final = {}    # other clients' ids seen finished: id -> what was seen
        self.down_seen = []     # times a call saw ServerUnavailable
        self.enqueue_errors = []
        self.uncertain = {}     # id -> [plan item, expect, run_after, t0, "not found" times]
        self.stalled_enqueues = {}  # id -> "queued" / "not stored", once resolved
        self.other_ids = []
        self.offsets = {}
        workdir = params["workdir"]
        self.ids_file = open(os.path.join(workdir, f"ids-{self.idx}.txt"), "a", buffering=1)
        from .flows import Flows  # the workflow workload (unique keys, limits, dependencies)

        self.flows = Flows(self, params.get("flows", 0), params.get("flows_dir"))
        self.other_files = [os.path.join(workdir, f"ids-{j}.txt")
                            for j in range(params["clients"]) if j != self.idx]
        self._server_started = None

    # ---- calls ------------------------------------------------------------------------------

    def _bump(self, slot, n=1):
        with self.counters.get_lock():
            self.counters[self.base + slot] += n

    def call(self, method, *args):
        """Raw call first (an outage is seen and counted), then the AUTOSTARTing backend."""
        from django_tasks_shared.exceptions import ServerAuthenticationError, ServerUnavailable

        try:
            return self.backend.client.call(method, *args)
        except ServerAuthenticationError:
            raise
        except ServerUnavailable:
            self.down_seen.append(time.time())
            self._bump(SEEN_DOWN)
            self._server_started = None
        deadline = time.monotonic() + 30.0
        while True:
            try:
                return self.backend.call(method, *args)
            except ServerUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _server_finished(self):
        """Tasks finished server-wide (a progress signal); None while it is unreachable."""
        from django_tasks_shared.exceptions import ServerUnavailable

        try:
            counters = self.call("health")["counters"]
        except ServerUnavailable:
            return None
        return counters["succeeded"] + counters["failed"]

    def server_started_at(self):
        if self._server_started is None:
            self._server_started = self.call("health")["server"]["started_at"]
        return self._server_started

    # ---- enqueue ----------------------------------------------------------------------------

    def _kwargs(self, workload, i):
        ledger = self.p["ledger"]
        if workload == "noop":
            return {"ledger": ledger, "n": i}, {"value": i}
        if workload == "cpu":
            n = self.rng.randint(5_000, 30_000)
            return {"ledger": ledger, "n": n}, {"value": (n - 1) * n * (2 * n - 1) // 6}
        if workload == "sleep":
            seconds = round(self.rng.uniform(0.01, 0.1), 3)
            return {"ledger": ledger, "seconds": seconds}, {"value": seconds}
        if workload == "flaky":
            return {"ledger": ledger}, {"value": 2}  # succeeds on its second attempt
        if workload == "hog":
            return {"ledger": ledger, "limit_mib": self.p["max_worker_memory"]}, None
        return {"ledger": ledger}, None

    def enqueue(self, item):
        from django_tasks_shared.exceptions import ServerUnavailable

        i, workload, priority, delay = item
        kwargs, expect = self._kwargs(workload, i)
        task = getattr(self.tasks, workload)
        run_after = None
        if delay:
            run_after = datetime.fromtimestamp(time.time() + delay, UTC)
        task = task.using(priority=priority, run_after=run_after)
        t0 = time.time()
        try:
            result = task.enqueue(**kwargs)
        except ServerUnavailable as exc:
            self.enqueue_errors.append(f"{time.time():.3f} {exc}")
            self.down_seen.append(time.time())
            self._bump(SEEN_DOWN)
            if exc.task_id and exc.maybe_applied:
                # No answer (a stall past the retry bound): the task may be queued. As the
                # message says: look it up once the server answers, never enqueue it blindly.
                self.uncertain[exc.task_id] = [item, expect, run_after, t0, []]
                return None
            # Down, or draining (it refuses new tasks): the caller retries later and goes on
            # polling meanwhile. Nothing was stored.
            return False
        self._adopt(result.id, workload, priority, run_after, expect, t0,
                    result.enqueued_at.timestamp())
        return True

    def _adopt(self, task_id, workload, priority, run_after, expect, t0, enqueued_at):
        info = {"w": workload, "c": self.idx, "p": priority,
                "run_after": run_after.timestamp() if run_after else None,
                "expect": expect, "t_enq": t0, "enqueued_at": enqueued_at,
                "status": None, "how": None, "seen": ["READY"]}
        self.info[task_id] = self.outstanding[task_id] = info
        self.ids_file.write(f"{task_id} {workload}\n")
        self._bump(ENQ)

    def resolve_uncertain(self, plan):
        """Enqueues that raised ServerStalled: found -> ours (tracked like any); not found twice,
        1 s apart, once the server answers -> not stored: back to the plan (a new id)."""
        from django_tasks_shared.exceptions import ServerUnavailable

        for task_id, entry in list(self.uncertain.items()):
            item, expect, run_after, t0, misses = entry
            if misses and time.time() - misses[-1] < 1.0:
                continue
            try:
                record = self.backend.client.call("get", task_id)
            except ServerUnavailable:
                return  # still stalled or down: later
            if record is not None:
                del self.uncertain[task_id]
                self.stalled_enqueues[task_id] = "queued"
                self._adopt(task_id, item[1], item[2], run_after, expect, t0,
                            record["enqueued_at"])
            elif len(misses) >= 1:
                del self.uncertain[task_id]
                self.stalled_enqueues[task_id] = "not stored"
                plan.appendleft(item)
            else:
                misses.append(time.time())

    # ---- poll ------------------------------------------------------------------------------

    def _finalize(self, task_id, how, record=None):
        info = self.outstanding.pop(task_id)
        info["how"] = how
        info["t_final"] = time.time()
        if record is not None:
            errors = record["errors"]
            info.update(
                status=record["status"], started_at=record["started_at"],
                finished_at=record["finished_at"], worker_ids=record["worker_ids"],
                err=errors[-1]["exception_class_path"] if errors else None,
                first_err=errors[0]["exception_class_path"] if errors else None,
                msg=_last_line(errors[-1]["traceback"]) if errors else None,
                ret=record["return_value"])
        self._bump(LOST if how == "lost-with-server" else DONE)

    def poll(self):
        ids = list(self.outstanding)
        if not ids:
            return 0
        t0 = time.time()
        records = self.call("get_many", ids)
        done = 0
        if None in records:
            self._server_started = None  # ask the server answering now when it started
        for task_id, record in zip(ids, records, strict=True):
            info = self.outstanding[task_id]
            if record is None:
                # Evicted before we saw it finish, or gone with a server that died?
                if self.server_started_at() > info["enqueued_at"]:
                    self._finalize(task_id, "lost-with-server")
                else:
                    self._finalize(task_id, "missing")
                done += 1
                continue
            status = record["status"]
            if status == "RUNNING" and record["started_at"] is not None:
                # Lower bound of how long it had run when the server answered.
                ran = t0 - record["started_at"]
                if ran > info.get("ran_max", 0.0):
                    info["ran_max"] = round(ran, 3)
            if status != info["seen"][-1]:
                info["seen"].append(status)
            if status in TERMINAL:
                self._finalize(task_id, "store", record)
                done += 1
        return done

    def _tail_others(self):
        for path in self.other_files:
            try:
                with open(path) as f:
                    f.seek(self.offsets.get(path, 0))
                    data = f.read()
            except FileNotFoundError:
                continue
            end = data.rfind("\n") + 1  # complete lines only
            self.offsets[path] = self.offsets.get(path, 0) + len(data[:end].encode())
            self.other_ids.extend(line.split()[0] for line in data[:end].splitlines() if line)

    def lookups(self):
        from django.tasks.exceptions import TaskResultDoesNotExist

        from django_tasks_shared.exceptions import ServerUnavailable

        if not self.other_ids:
            return
        for _ in range(self.p["lookups"]):
            task_id = self.rng.choice(self.other_ids)
            t0 = time.time()
            try:
                result = self.backend.get_result(task_id)
            except TaskResultDoesNotExist:
                self.cross.append([task_id, None, None, t0, time.time()])
                continue
            except ServerUnavailable:
                self.down_seen.append(time.time())
                self._bump(SEEN_DOWN)
                return
            err = result.errors[-1].exception_class_path if result.errors else None
            self.cross.append([task_id, result.status.value, err, t0, time.time()])
            if result.is_finished and task_id not in self.seen_final:
                # Everything the checker needs if the owner misses this task's end.
                self.seen_final[task_id] = {
                    "status": result.status.value, "err": err,
                    "first_err": result.errors[0].exception_class_path if result.errors else None,
                    "msg": _last_line(result.errors[-1].traceback) if result.errors else None,
                    "ret": result.return_value if result.status == "SUCCESSFUL" else None,
                    "worker_ids": list(result.worker_ids)}

    # ---- main loop -------------------------------------------------------------------------

    def run(self):
        plan = deque(self.p["plan"])
        window, interval = self.p["window"], self.p["poll_interval"]
        next_poll = next_tail = retry_at = next_progress_check = 0.0
        failing_since = stop_at = last_finished = None
        done_enqueues = 0  # the workflow workload paces itself by it
        while plan or self.outstanding or self.uncertain:
            now = time.monotonic()
            n = 0
            if self.uncertain:
                self.resolve_uncertain(plan)
            while plan and len(self.outstanding) < window and n < 50 and now >= retry_at:
                enqueued = self.enqueue(plan[0])
                if enqueued is None:  # maybe queued: resolve_uncertain decides
                    plan.popleft()
                    retry_at = now + 0.2
                    break
                if enqueued:
                    plan.popleft()
                    failing_since = None
                    n += 1
                    done_enqueues += 1
                    self.flows.step(done_enqueues, rest=not plan)
                    continue
                failing_since = failing_since or now
                retry_at = now + 0.2
                if now - failing_since > self.p["max_wait"]:
                    plan.clear()  # the checker reports them as never enqueued
            if not plan and (stop_at is None or now >= next_progress_check):
                # Give up on our last tasks only when the server stops making progress: with
                # strict priorities, low-priority tasks legitimately wait while other clients
                # keep enqueueing higher ones (minutes, in a 100,000-task soak).
                finished = self._server_finished()
                if stop_at is None or finished != last_finished:
                    stop_at = now + self.p["max_wait"]
                last_finished, next_progress_check = finished, now + 1.0
            if now >= next_tail:
                self._tail_others()
                next_tail = now + 0.5
            if now >= next_poll:
                self.poll()
                self.flows.poll()
                self.lookups()
                next_poll = now + interval
            if stop_at is not None and now > stop_at:
                break
            if n == 0:
                time.sleep(min(0.01, max(0.0, next_poll - time.monotonic())))
        for task_id in list(self.outstanding):
            self._finalize(task_id, "unfinished")
        flows_until = time.monotonic() + self.p["max_wait"]
        while self.flows.outstanding and time.monotonic() < flows_until:
            self.flows.poll()
            time.sleep(interval)
        self.ids_file.close()
        out = {"idx": self.idx, "tasks": self.info, "cross": self.cross,
               "flows": self.flows.output(),
               "seen_final": self.seen_final,
               "down_seen": self.down_seen, "enqueue_errors": self.enqueue_errors,
               "stalled_enqueues": self.stalled_enqueues | dict.fromkeys(self.uncertain, "?"),
               "pid": os.getpid()}
        path = os.path.join(self.p["workdir"], f"client-{self.idx}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(out, f)
        os.replace(path + ".tmp", path)


def main(params, counters):
    Client(params, counters).run()
