"""Profile the task server's serving code under W1 (the numbers of docs/architecture.md).

    python -m stress.profile_server [--tasks 2000] [--repeat 3] [--top 25] [--no-profile]

    parent: starts `python -m stress.profile_server --serve` (a real tasks_server on a private
            socket, 2 workers), enqueues --tasks no-op tasks through Django's API and waits for
            them with wait_all, --repeat times; psutil CPU of the server and of the workers
            before/after -> CPU per task; SIGTERM; prints the server's profile
    child:  cProfile enabled in the thread(s) that serve clients: the event loop's thread, or,
            on a server from before it (one thread per connection), every connection thread
            (merged) -> a pstats file, written when the server stops

Runs on both server designs, so the same command gives the "before" on an older checkout.
Not a test: prints figures, exits 0 unless something crashes; every process it starts is
stopped by pid.
"""

import argparse
import cProfile
import os
import pstats
import secrets
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = "stress.bench_settings"


def _profile_serving(stats_path):
    """Patch the serving entry point of whichever design this checkout has."""
    profiles = []
    lock = threading.Lock()

    def wrap(function):
        def profiled(*args, **kwargs):
            profile = cProfile.Profile()
            with lock:
                profiles.append(profile)
            profile.enable()
            try:
                return function(*args, **kwargs)
            finally:
                profile.disable()
        return profiled

    try:
        from django_tasks_shared import eventloop
        eventloop.EventLoop.run = wrap(eventloop.EventLoop.run)
    except ImportError:
        from django_tasks_shared import server
        server.StoreServer.serve_client = wrap(server.StoreServer.serve_client)

    def dump():
        with lock:
            done = [p for p in profiles]
        if done:
            stats = pstats.Stats(done[0])
            for profile in done[1:]:
                stats.add(profile)
            stats.dump_stats(stats_path)
    return dump


def serve_child(stats_path):
    import django
    django.setup()
    from django.core.management import call_command

    dump = _profile_serving(stats_path) if stats_path else (lambda: None)
    try:
        call_command("tasks_server", "--grace", "2")
    finally:
        time.sleep(0.3)  # the serving threads' profiles end as their connections close
        dump()


def _cpu(proc):
    times = proc.cpu_times()
    return times.user + times.system


def run(tasks, repeat, top, profile=True):
    import psutil

    workdir = tempfile.mkdtemp(prefix="dts-prof-")
    address = os.path.join(workdir, "tasks.sock")
    stats_path = os.path.join(workdir, "server.pstats")
    env = dict(os.environ, DJANGO_SETTINGS_MODULE=SETTINGS, BENCH_TASKS_ADDRESS=address,
               BENCH_SECRET_KEY=secrets.token_hex(16), PYTHONPATH=ROOT)
    command = [sys.executable, "-m", "stress.profile_server", "--serve"]
    if profile:
        command += ["--stats", stats_path]
    child = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        os.environ.update(env)
        import django
        django.setup()
        from django.tasks import task_backends

        from django_tasks_shared import wait_all
        from stress.bench_tasks import noop

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
            before = (_cpu(server), sum(_cpu(w) for w in workers), time.process_time())
            started = time.perf_counter()
            results = [noop.enqueue() for _ in range(tasks)]
            wait_all(results, timeout=120)
            wall = time.perf_counter() - started
            after = (_cpu(server), sum(_cpu(w) for w in workers), time.process_time())
            per = [(a - b) / tasks * 1e6 for a, b in zip(after, before, strict=True)]
            print(f"repeat {n + 1}: {tasks / wall:,.0f} tasks/s; CPU per task: server "
                  f"{per[0]:.0f} us, workers {per[1]:.0f} us, enqueuing process {per[2]:.0f} us")
    finally:
        child.terminate()
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
    if os.path.exists(stats_path):
        print(f"\nserver profile (serving threads only; {repeat * tasks + 200} tasks, "
              f"cumulative order):")
        stats = pstats.Stats(stats_path)
        stats.sort_stats("tottime").print_stats(top)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-profile", action="store_true",
                        help="CPU per task without cProfile's overhead (no profile printed)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stats", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_child(args.stats)
    else:
        run(args.tasks, args.repeat, args.top, profile=not args.no_profile)


if __name__ == "__main__":
    main()
