"""A worker process: THREADS threads, each looping over one round trip per task.

    spec (JSON on stdin, from the supervisor) -> django.setup()
    thread loop:   outcome = None
                   loop: next = report_and_claim(worker, outcome, CLAIM_WAIT, thread, seq)
                         (claims.py: 1 round trip; sent again until the server answers)
                         STOP -> exit | None -> poll again | record -> outcome = execute(record)
    watchdog:      the server (our parent) is gone -> os._exit: no orphan outlives it
    end notices:   one more thread sends task_finished for the tasks the server ended
                   (worker/notices.py), stopped after the task threads

With DJANGO_TASKS_SHARED_PROFILE=<dir> in the server's environment, each worker runs under
cProfile (every thread) and writes <dir>/worker-<pid>.prof when it is stopped (SIGTERM, as the
server stops its workers): `python -m stress.profile_worker --worker-profile` reads them.

A worker that cannot set Django up reports the traceback with `worker_failed` (so it shows in
`tasks_health`) and exits with code 3; the supervisor backs off before the next try.
"""

import json
import logging
import os
import signal
import sys
import threading
import time
import traceback

from ..client.connection import StoreClient
from ..protocol.status import FAILED, STOP, class_path
from .claims import Claimer

CLAIM_WAIT = 1.0  # server-side long-poll; at most half the socket timeout (see _loop)
logger = logging.getLogger("django_tasks_shared.worker")


def _watch_parent(server_pid):
    while True:
        if os.getppid() != server_pid:
            os._exit(1)
        time.sleep(0.25)


def _loop(client, worker_id, thread, sender, execute, max_payload):
    outcome = record = None
    claimer = Claimer(client, worker_id, thread, min(CLAIM_WAIT, client.timeout / 2))
    while True:
        # Kept until the server answers (a stall, a lost reply, a refused report): the outcome
        # of a finished task is never dropped, and the worker does not exit for it.
        record = claimer.next(outcome, record)
        outcome = None
        if record is None:
            continue
        if record == STOP:
            return
        try:
            outcome = execute(record, sender, max_payload, client)
        except BaseException as exc:  # a signal receiver raised (even SystemExit): the task
            # still gets an outcome and the thread lives on
            outcome = {"id": record["id"], "status": FAILED, "finished_at": time.time(),
                       "errors": [{"exception_class_path": class_path(type(exc)),
                                   "traceback": traceback.format_exc()}]}


def _profile(directory):
    """Profile every thread of this process until SIGTERM, then write the stats and exit."""
    import cProfile

    profiler = cProfile.Profile()

    def dump(signum, frame):
        profiler.disable()
        profiler.dump_stats(os.path.join(directory, f"worker-{os.getpid()}.prof"))
        os._exit(0)

    signal.signal(signal.SIGTERM, dump)
    profiler.enable()


def main():
    spec = json.loads(sys.stdin.readline())
    sys.stdin.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when we stop
    address = spec["address"] if isinstance(spec["address"], str) else tuple(spec["address"])
    client = StoreClient(address, bytes.fromhex(spec["authkey"]), spec.get("timeout", 5.0))
    worker_id = spec["worker_id"]
    threading.Thread(target=_watch_parent, args=(spec["server_pid"],), daemon=True).start()
    try:
        import django

        django.setup()
        from django.tasks import task_backends

        from . import notices
        from .execution import execute, sender_for

        sender = sender_for(task_backends, spec["alias"], spec.get("kind"))
    except Exception:
        text = traceback.format_exc()
        sys.stderr.write(f"django-tasks-shared worker {worker_id} cannot start:\n{text}")
        try:
            client.call("worker_failed", worker_id, text)
        except Exception:
            pass
        sys.exit(3)
    if os.environ.get("DJANGO_TASKS_SHARED_PROFILE"):
        _profile(os.environ["DJANGO_TASKS_SHARED_PROFILE"])
    threads = [threading.Thread(target=_loop, args=(client, worker_id, i, sender, execute,
                                                  spec.get("max_payload")),
                                name=f"task-thread-{i}", daemon=True)
               for i in range(spec["threads"])]
    notice_sender = notices.start(client, worker_id, sender)  # connected before the first claim
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    notice_sender.stop()  # its last acknowledgements, within a few seconds
    logging.shutdown()
    os._exit(0)  # daemon threads still inside a task (server gone) must not block exit
