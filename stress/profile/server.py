"""Profile the task server's serving code under W1 (the numbers of docs/architecture.md).

    python -m stress.profile_server [--tasks 2000] [--repeat 3] [--top 25] [--no-profile]
                                    [--many]

    parent: starts `python -m stress.profile.server --serve` (a real tasks_server on a private
            socket, 2 workers), enqueues --tasks no-op tasks through Django's API and waits for
            them with wait_all, --repeat times; psutil CPU of the server and of the workers
            before/after -> CPU per task; SIGTERM; prints the server's profile. --many: the
            tasks enqueued with one enqueue_many() call instead (a deep queue: prefetch)
    child:  cProfile over the whole server process (every thread: the event loop's, or on a
            server from before it one per connection, and the supervisor's) -> a pstats file,
            written when the server stops

Runs on both server designs, so the same command gives the "before" on an older checkout.
Not a test: prints figures, exits 0 unless something crashes; every process it starts is
stopped by pid.
"""

import argparse
import cProfile
import os
import pstats
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

from stress.common.paths import ROOT

SETTINGS = "stress.bench.settings"


def _profile_process(stats_path):
    """One profiler for the whole server process. Since Python 3.12 cProfile rides on
    sys.monitoring, which sees every thread and allows one active profiler: the profile covers
    the serving thread(s) and the supervisor alike, whichever server design this checkout has."""
    profile = cProfile.Profile()
    profile.enable()

    def dump():
        profile.disable()
        profile.dump_stats(stats_path)
    return dump


def serve_child(stats_path):
    import django
    django.setup()
    from django.core.management import call_command

    dump = _profile_process(stats_path) if stats_path else (lambda: None)
    try:
        call_command("tasks_server", "--grace", "2")
    finally:
        dump()


def _cpu(proc):
    times = proc.cpu_times()
    return times.user + times.system


def _sys(proc):
    return proc.cpu_times().system


def run(tasks, repeat, top, profile=True, many=False):
    import psutil

    workdir = tempfile.mkdtemp(prefix="dts-prof-")
    address = os.path.join(workdir, "tasks.sock")
    stats_path = os.path.join(workdir, "server.pstats")
    env = dict(os.environ, DJANGO_SETTINGS_MODULE=SETTINGS, BENCH_TASKS_ADDRESS=address,
               BENCH_SECRET_KEY=secrets.token_hex(16),
               PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), ROOT])))
    command = [sys.executable, "-m", "stress.profile.server", "--serve"]
    if profile:
        command += ["--stats", stats_path]
    child = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        os.environ.update(env)
        import django
        django.setup()
        from django.tasks import task_backends

        from django_tasks_shared import enqueue_many, wait_all
        from stress.common.tasks import noop

        backend = task_backends["default"]
        deadline = time.monotonic() + 30
        while True:
            try:
                health = backend.health()
                if len(health["workers"]) == 2 and all(w["ready_at"] for w in health["workers"]):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server or its workers did not start within 30 s")
            time.sleep(0.1)
        server = psutil.Process(child.pid)
        workers = [psutil.Process(w["pid"]) for w in health["workers"]]
        wait_all([noop.enqueue() for _ in range(200)], timeout=30)  # warm-up
        for n in range(repeat):
            before = (_cpu(server), sum(_cpu(w) for w in workers), time.process_time(),
                      _sys(server), sum(_sys(w) for w in workers))
            started = time.perf_counter()
            results = enqueue_many(noop, [((), {})] * tasks) if many else \
                [noop.enqueue() for _ in range(tasks)]
            wait_all(results, timeout=120)
            wall = time.perf_counter() - started
            after = (_cpu(server), sum(_cpu(w) for w in workers), time.process_time(),
                     _sys(server), sum(_sys(w) for w in workers))
            per = [(a - b) / tasks * 1e6 for a, b in zip(after, before, strict=True)]
            print(f"repeat {n + 1}: {tasks / wall:,.0f} tasks/s; CPU per task: server "
                  f"{per[0]:.0f} us (kernel {per[3]:.0f}), workers {per[1]:.0f} us (kernel "
                  f"{per[4]:.0f}), enqueuing process {per[2]:.0f} us")
    finally:
        child.terminate()
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
    try:
        if os.path.exists(stats_path):
            print(f"\nserver profile (all its threads; {repeat * tasks + 200} tasks, "
                  f"internal time order):")
            stats = pstats.Stats(stats_path)
            stats.sort_stats("tottime").print_stats(top)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # the socket, its lock and log, the stats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-profile", action="store_true",
                        help="CPU per task without cProfile's overhead (no profile printed)")
    parser.add_argument("--many", action="store_true",
                        help="enqueue the tasks with one enqueue_many() call (a deep queue)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stats", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_child(args.stats)
    else:
        run(args.tasks, args.repeat, args.top, profile=not args.no_profile, many=args.many)


if __name__ == "__main__":
    main()
