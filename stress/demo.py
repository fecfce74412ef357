"""Demo: several OS processes share ONE embedded task server (`python -m stress.demo`).

    this process (owner) ── first use of the backend starts the embedded server (no ADDRESS) ──┐
    client A, B, C, D    ── separate OS processes, same settings: they find the same socket ──┤
       1. enqueue ~100 `square(i, origin)` tasks each, wait for their own results              │
       2. look up a sample of the OTHER processes' result ids                                  │
    server + 2 worker processes (run every task, keep every result) <──────────────────────────┘

Prints one line per process (enqueued, succeeded, sample results, cross lookups) and exits
non-zero if any task failed, any value is wrong or any cross-process lookup misses. Every process
it starts is stopped by pid at the end; the embedded server stops with this process.

Options: --processes N (4), --tasks N per process (100), --sample N ids looked up per other
process (10).
"""

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import time

from stress.common.paths import ROOT

SETTINGS = "stress.bench.settings"
NAMES = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _setup():
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
    os.environ.pop("BENCH_TASKS_ADDRESS", None)  # the embedded default server, no ADDRESS
    import django

    django.setup()


def child(name, n_tasks):
    """One client process: phase 1 on argv, phase 2 (ids to look up) on stdin."""
    _setup()
    from django.tasks import default_task_backend
    from django.tasks.exceptions import TaskResultDoesNotExist

    from django_tasks_shared import wait
    from stress.common.tasks import square

    t0 = time.perf_counter()
    results = [square.enqueue(i, name) for i in range(n_tasks)]
    for r in results:
        wait(r, 30)
    own = []
    for i, r in enumerate(results):
        ok = r.status.value == "SUCCESSFUL" and r.return_value == {
            "i": i, "square": i * i, "origin": name,
            "worker_pid": r.return_value["worker_pid"]}
        own.append({"id": r.id, "i": i, "ok": ok, "status": r.status.value,
                    "worker": r.return_value["worker_pid"] if ok else None})
    print(json.dumps({"pid": os.getpid(), "own": own,
                      "seconds": time.perf_counter() - t0}), flush=True)

    lookups = json.loads(sys.stdin.readline())  # [{"id", "origin", "i"}, ...]
    checked = []
    for item in lookups:
        try:
            r = default_task_backend.get_result(item["id"])
            value = r.return_value if r.status.value == "SUCCESSFUL" else None
            ok = (value or {}).get("origin") == item["origin"] and \
                value["i"] == item["i"] and value["square"] == item["i"] ** 2
        except TaskResultDoesNotExist:
            ok = False
        checked.append({"origin": item["origin"], "ok": ok})
    print(json.dumps({"lookups": checked}), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m stress.demo", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=100, help="tasks per process")
    parser.add_argument("--sample", type=int, default=10,
                        help="ids looked up per other process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    if args.child:
        child(args.child, args.tasks)
        return 0

    t0 = time.perf_counter()
    _setup()
    from django.tasks import default_task_backend

    from django_tasks_shared import wait
    from stress.common.tasks import square

    children = []
    problems = []
    try:
        # Our first use starts the embedded server (we own it; it dies with us).
        wait(square.enqueue(0, "owner"), 60)
        health = default_task_backend.health()
        server = health["server"]
        print(f"django-tasks-shared demo: {args.processes} processes x {args.tasks} tasks on "
              f"one embedded server (pid {server['pid']}, {server['address']}, "
              f"{len(health['workers'])} worker processes)")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        names = NAMES[:args.processes]
        for name in names:
            children.append(subprocess.Popen(
                [sys.executable, "-m", "stress.demo", "--child", name, "--tasks",
                 str(args.tasks)], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True))
        phase1 = {}
        for name, popen in zip(names, children, strict=True):
            line = popen.stdout.readline()
            if not line:
                raise RuntimeError(f"client {name} (pid {popen.pid}) exited early "
                                   f"(code {popen.wait(10)})")
            phase1[name] = json.loads(line)
        rng = random.Random(7)
        for name, popen in zip(names, children, strict=True):
            asks = []
            for other in names:
                if other == name:
                    continue
                own = phase1[other]["own"]
                for item in rng.sample(own, min(args.sample, len(own))):
                    asks.append({"id": item["id"], "origin": other, "i": item["i"]})
            popen.stdin.write(json.dumps(asks) + "\n")
            popen.stdin.flush()
        phase2 = {}
        for name, popen in zip(names, children, strict=True):
            line = popen.stdout.readline()
            if not line:
                raise RuntimeError(f"client {name} (pid {popen.pid}) exited before its lookups")
            phase2[name] = json.loads(line)
            popen.stdin.close()
            if popen.wait(30) != 0:
                problems.append(f"client {name} exited with {popen.returncode}")

        print(f"{'proc':<5}{'pid':>8}{'enqueued':>10}{'succeeded':>11}  "
              f"{'sample results (i -> i*i @ worker pid)':<44}{'cross lookups':>14}")
        workers, total_ok, total_lookups, total_lookups_ok = set(), 0, 0, 0
        for name in names:
            own, lookups = phase1[name]["own"], phase2[name]["lookups"]
            ok = sum(item["ok"] for item in own)
            lok = sum(item["ok"] for item in lookups)
            workers.update(item["worker"] for item in own if item["worker"])
            total_ok += ok
            total_lookups += len(lookups)
            total_lookups_ok += lok
            shown = [own[0], own[len(own) // 2], own[-1]] if own else []
            sample = ", ".join(f"{item['i']}->{item['i'] ** 2}@{item['worker']}"
                               for item in shown)
            others = ",".join(sorted({item["origin"] for item in lookups}))
            print(f"{name:<5}{phase1[name]['pid']:>8}{len(own):>10}{ok:>11}  {sample:<44}"
                  f"{lok:>4}/{len(lookups):<3} of {others}")
            if ok != len(own) or len(own) != args.tasks:
                problems.append(f"client {name}: {ok} of {args.tasks} own tasks succeeded "
                                f"with the right value")
            if lok != len(lookups):
                problems.append(f"client {name}: {len(lookups) - lok} of {len(lookups)} "
                                f"lookups of other processes' results failed")
        total = args.processes * args.tasks
        print(f"total: {total} tasks from {args.processes} processes, {total_ok} succeeded, "
              f"{total_lookups_ok}/{total_lookups} cross-process lookups ok, run by worker "
              f"pids {sorted(workers)}; {time.perf_counter() - t0:.1f} s")
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        _stop(children)
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("OK: every process saw every other process's results through the shared server")
    return 0


def _stop(children):
    """Stop the clients and the embedded server we own, by pid; then any leftover descendant."""
    import psutil

    from django_tasks_shared.client import launcher

    me = psutil.Process()
    descendants = me.children(recursive=True)
    for popen in children:
        if popen.poll() is None:
            popen.kill()
        with contextlib.suppress(Exception):
            popen.wait(5)
    owned = [p for p in launcher.owned_servers() if p.poll() is None]
    for popen in owned:
        popen.terminate()
    for popen in owned:
        try:
            popen.wait(10)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)
    left = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=5)


if __name__ == "__main__":
    sys.exit(main())
