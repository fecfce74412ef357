"""Profile of a worker's execution path: CPU per no-op task, in process and end to end.

    python -m stress.profile_worker [--n N] [--repeat R] [--top K] [--e2e-tasks M] [--no-e2e]
                                    [--worker-profile] [--quiet-task-log] [--src DIR]
                                    [--bare N]

Two measurements, both with the benchmark's settings (stress.profile.settings, which are
stress.bench.settings) and its no-op task (stress.common.tasks.noop):

    in process  execution.execute() on N records shaped like the ones finish_and_claim hands a
                worker (RUNNING, one worker id, enqueued/started timestamps), with the worker's
                kind of client (a StoreClient, never called by a no-op) -> CPU per task
                (time.thread_time, batches of 1,000), R repeats, then one cProfile run: the
                top K by own time
    end to end  the embedded server with 2 real workers (as stress.bench runs them): M no-op
                tasks enqueued, then waited with wait_all -> psutil cpu_times (user, system)
                of the worker pids before and after, divided by M; R repeats. This adds what
                execute() does not do: the claim round trip (pickle, two system calls, unpickle)
                and the worker loop. Side by side in each repeat (order alternating): the
                same with django-tasks-local's ProcessPoolBackend (2 processes), if installed
    --quiet-task-log  Django's "django.tasks" logger at WARNING (see stress/profile/settings.py),
                in this process and the workers: what Django's two log lines per task cost
    --src DIR   django_tasks_shared imported from DIR (an older checkout's src): paired
                before/after runs on one machine
    --bare N    only set up and run N execute() calls, for an instruction count that no other
                process can disturb: the difference of two runs under valgrind, e.g.
                valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m
                stress.profile_worker --bare 2000 (and --bare 0), divided by 2000
    --worker-profile  instead of the two above: one end-to-end run with the workers under
                cProfile (DJANGO_TASKS_SHARED_PROFILE, see django_tasks_shared/worker/process.py),
                their stats merged, the top K by own time

Not a test: it prints figures and exits 0. Every process it starts is stopped by pid.
"""

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time

from stress.common.layout import internal
from stress.common.paths import ROOT


def make_records(n):
    """Records as a worker receives them (TaskStore._start: RUNNING, started, one worker id)."""
    import secrets

    new_record = internal("django_tasks_shared.protocol.records",
                          "django_tasks_shared.store").new_record
    RUNNING = internal("django_tasks_shared.protocol.status", "django_tasks_shared.store").RUNNING

    now = time.time()
    records = []
    for _ in range(n):
        record = new_record(id=secrets.token_hex(16), task="stress.common.tasks.noop", args=[],
                            kwargs={}, backend="default")
        record.update(status=RUNNING, enqueued_at=now, started_at=now, last_attempted_at=now,
                      worker_ids=["w-profile"])
        records.append(record)
    return records


def _execute_and_client():
    """execute() and StoreClient, at their paths in this layout or in an older one (--src)."""
    execution = internal("django_tasks_shared.worker.execution", "django_tasks_shared.execution")
    connection = internal("django_tasks_shared.client.connection", "django_tasks_shared.client")
    return execution.execute, connection.StoreClient


def bare(n):
    from django.tasks import task_backends

    execute, StoreClient = _execute_and_client()

    backend = task_backends["default"]
    client = StoreClient(os.path.join(ROOT, "no-server.sock"), b"k" * 32)
    for record in make_records(200 + n):  # 200: the same warm-up in every run
        execute(record, type(backend), backend.config.max_payload, client)


def in_process(n, repeat, top, batch=1000):
    """execute() on n records per repeat, timed in batches with time.thread_time: CPU of this
    thread only, so other processes on the machine add no time (they still pollute caches,
    hence the best batch is shown beside the median)."""
    from django.tasks import task_backends

    execute, StoreClient = _execute_and_client()

    backend = task_backends["default"]
    sender, max_payload = type(backend), backend.config.max_payload
    # The worker's own kind of client; a no-op task never calls it (no set_progress).
    client = StoreClient(os.path.join(ROOT, "no-server.sock"), b"k" * 32)
    for record in make_records(200):  # warm up: imports, caches
        execute(record, sender, max_payload, client)
    medians, bests = [], []
    for _ in range(repeat):
        batches = []
        for _ in range(max(1, n // batch)):
            records = make_records(batch)
            cpu0 = time.thread_time()
            for record in records:
                outcome = execute(record, sender, max_payload, client)
            batches.append((time.thread_time() - cpu0) / batch * 1e6)
            if outcome["status"] != "SUCCESSFUL":
                raise RuntimeError(f"the no-op task did not succeed: {outcome}")
        medians.append(statistics.median(batches))
        bests.append(min(batches))
    print(f"in process: execute() CPU per no-op task, {n:,} tasks x {repeat}, in batches of "
          f"{batch}: median " + ", ".join(f"{f:.1f}" for f in medians)
          + " us; best batch " + ", ".join(f"{f:.1f}" for f in bests) + " us")
    records = make_records(n)
    profiler = cProfile.Profile()
    profiler.enable()
    for record in records:
        execute(record, sender, max_payload, client)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    print(f"cProfile of {n:,} execute() calls, top {top} by own time "
          "(the profiler itself inflates every call):")
    print("\n".join(line for line in out.getvalue().splitlines()
                    if line.strip() and not line.startswith(("   Ordered", "         "))
                    or "function calls" in line))
    return medians


def _cpu(pids):
    """(user, system) CPU seconds of the given pids."""
    import psutil

    user = system = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        user, system = user + times.user, system + times.system
    return user, system


def _run_batch(system, n):
    """n no-op tasks enqueued then waited for: (worker user, worker system, server) us/task."""
    servers, workers = system.other_pids()
    w0, s0 = _cpu(workers), _cpu(servers)
    results = [system.enqueue_noop() for _ in range(n)]
    system.wait_all(results)
    w1, s1 = _cpu(workers), _cpu(servers)
    bad = sum(r.status.value != "SUCCESSFUL" for r in results)
    if bad:
        raise RuntimeError(f"{bad} of {n} no-op tasks did not succeed")
    return ((w1[0] - w0[0]) / n * 1e6, (w1[1] - w0[1]) / n * 1e6,
            (sum(s1) - sum(s0)) / n * 1e6)


def end_to_end(n, repeat, with_local=True):
    """Worker CPU per task of ours and, side by side in each repeat, django-tasks-local's."""
    from types import SimpleNamespace

    from stress.bench import runner as bench

    args = SimpleNamespace(server=False, poll=0.0001)
    systems = [bench.Shared(args, {})]
    if with_local:
        from django.tasks import task_backends

        if "local" in task_backends.settings:
            systems.append(bench.Local(args, {}))
    rows = {s.name: [] for s in systems}
    try:
        for system in systems:
            system.start()
            _run_batch(system, 200)  # warm up both workers
        for rep in range(repeat):
            for system in systems[rep % 2:] + systems[:rep % 2]:
                rows[system.name].append(_run_batch(system, n))
    finally:
        for system in systems:
            system.stop()
        bench.stop_everything()
    print(f"end to end: 2 workers, {n:,} no-op tasks x {repeat} (enqueue all, then wait for "
          "all), CPU per task in us (psutil):")
    for name, label in (("shared", "ours"), ("local", "django-tasks-local")):
        if name not in rows:
            continue
        values = rows[name]
        totals = [user + sys_ for user, sys_, _ in values]
        lines = [("workers user+system", totals), ("workers user", [v[0] for v in values]),
                 ("workers system", [v[1] for v in values])]
        if name == "shared":
            lines.append(("server", [v[2] for v in values]))
        for what, figures in lines:
            print(f"  {label + ' ' + what:<40} " + ", ".join(f"{v:.1f}" for v in figures)
                  + f"  (median {statistics.median(figures):.1f})")
    return rows


def worker_profile(n, top):
    import glob
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="dts-worker-profile-")
    os.environ["DJANGO_TASKS_SHARED_PROFILE"] = directory  # the embedded server's workers
    try:
        end_to_end(n, 1, with_local=False)
        files = glob.glob(os.path.join(directory, "worker-*.prof"))
        if not files:
            raise RuntimeError("the workers wrote no profile")
        out = io.StringIO()
        stats = pstats.Stats(*files, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        print(f"cProfile of {len(files)} workers over the whole run (start-up, warm-up and "
              f"{n:,} timed tasks), top {top} by own time:")
        print(out.getvalue())
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m stress.profile_worker",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="tasks per in-process repeat")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of each measurement")
    parser.add_argument("--top", type=int, default=25, help="cProfile lines shown")
    parser.add_argument("--e2e-tasks", type=int, default=2000, help="tasks per end-to-end run")
    parser.add_argument("--no-e2e", action="store_true", help="only the in-process profile")
    parser.add_argument("--src", metavar="DIR",
                        help="import django_tasks_shared from DIR (e.g. an older checkout's src, "
                             "for a paired before/after run); the workers inherit it")
    parser.add_argument("--quiet-task-log", action="store_true",
                        help='Django\'s "django.tasks" logger at WARNING (workers too)')
    parser.add_argument("--bare", type=int, metavar="N",
                        help="only N execute() calls (for valgrind's instruction count)")
    parser.add_argument("--worker-profile", action="store_true",
                        help="profile the real workers of one end-to-end run instead")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    if args.src:
        sys.path.insert(0, os.path.abspath(args.src))
    if args.quiet_task_log:
        os.environ["PROFILE_QUIET_TASK_LOG"] = "1"  # read by the workers' settings too
    os.environ["DJANGO_SETTINGS_MODULE"] = "stress.profile.settings"
    import django

    django.setup()
    if args.bare is not None:
        bare(args.bare)
        return 0
    import django_tasks_shared

    print(f"django_tasks_shared from {os.path.dirname(django_tasks_shared.__file__)}")
    if args.worker_profile:
        worker_profile(args.e2e_tasks, args.top)
        return 0
    in_process(args.n, args.repeat, args.top)
    if not args.no_e2e:
        end_to_end(args.e2e_tasks, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
