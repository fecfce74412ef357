"""W5: 64 client processes enqueuing and waiting at once, against 1 client doing the same total.

    parent (the bench)                 launcher (python -m stress.bench --w5-child)
    run_child({clients, each}) ------> django.setup(); fork `clients` children; each child:
                                         connects (a ping), says ready on a pipe, then blocks
                                         reading the "go" pipe
                                       all ready -> close "go": every child starts at once
                                         t0; enqueue `each` no-op tasks; wait_all(them); t1
                                         one JSON line {t0, t1, failed} on the results pipe;
                                         os._exit (no atexit handlers of the launcher)
    {"t0": min t0, "t1": max t1, ...} <- collects the lines, reaps the children by pid
    -> tasks/s = clients * each / (max t1 - min t0); the clock is CLOCK_MONOTONIC, one for the
       whole machine, so the children's stamps compare

Both runs go through the same launcher (1 child doing all the tasks, then 64 children doing 1/64
each; the order alternates per repeat), so process start-up is outside the timed part of both.
ratio = 64-client tasks/s / 1-client tasks/s (issue 9 target >= 0.9x). Only for ours: local
cannot share a queue between processes, and Huey is not what this target is about.
"""

import contextlib
import json
import os
import select
import signal
import sys
import time
import traceback

CLIENTS = 64
# ready + run + reap (30 + 60 + 10 s) stay under run_child's 120 s, so the launcher is never
# killed with its children still running (they would outlive it, orphaned)
READY_TIMEOUT = 30.0
TIMEOUT = 60.0


def w5(system, total, rep, run_child, cpu_of):
    """Both runs (1 client, CLIENTS clients) on `system` (ours), in an order set by `rep`."""
    each = max(1, total // CLIENTS)
    runs = [(1, each * CLIENTS), (CLIENTS, each)]
    if rep % 2:
        runs.reverse()
    out = {}
    for clients, per_client in runs:
        servers, _ = system.other_pids()
        cpu0 = cpu_of(servers)
        got = run_child({"clients": clients, "each": per_client}, "--w5-child")
        cpu1 = cpu_of(servers)
        n = clients * per_client
        if got["failed"] or got["reported"] != clients:
            raise RuntimeError(f"W5 with {clients} clients: {got['reported']} of {clients} "
                               f"reported, {got['failed']} tasks not successful")
        key = "w5_1" if clients == 1 else "w5_many"
        out[f"{key}_tps"] = n / (got["t1"] - got["t0"])
        out[f"{key}_server_cpu_us"] = (cpu1 - cpu0) / n * 1e6
    out["w5_ratio"] = out["w5_many_tps"] / out["w5_1_tps"]
    return out


def launcher():
    """The --w5-child process: fork the clients, start them together, collect their times."""
    import django

    django.setup()  # before the fork: the children inherit it (no per-child start-up cost)
    spec = json.loads(sys.stdin.read())
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    pids = []
    for _ in range(spec["clients"]):
        pid = os.fork()
        if pid == 0:
            os.close(ready_r), os.close(go_w), os.close(done_r)
            code = 1
            try:
                _client(spec["each"], ready_w, go_r, done_w)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)  # never return into the launcher's code (nor its atexit)
        pids.append(pid)
    os.close(ready_w), os.close(go_r), os.close(done_w)
    try:
        _read_exactly(ready_r, len(pids), "ready")
        os.close(go_w)  # EOF on "go" wakes every child at once
        go_w = None
        lines = _read_lines(done_r, len(pids))
    finally:
        if go_w is not None:  # failed before the start: let the children run out, then reap
            os.close(go_w)
        _reap(pids)
    stamps = [json.loads(line) for line in lines]
    json.dump({"reported": len(stamps), "t0": min(s["t0"] for s in stamps),
               "t1": max(s["t1"] for s in stamps), "failed": sum(s["failed"] for s in stamps)},
              sys.stdout)


def _client(each, ready_w, go_r, done_w):
    from django.tasks import task_backends

    from django_tasks_shared import wait_all
    from stress.common import tasks as bench_tasks

    task_backends["default"].client.call("ping")  # connected before the start
    os.write(ready_w, b"r")
    os.read(go_r, 1)  # returns b"" once the launcher closes its end
    t0 = time.monotonic()
    results = [bench_tasks.noop.enqueue() for _ in range(each)]
    wait_all(results, TIMEOUT)
    t1 = time.monotonic()
    failed = sum(r.status.value != "SUCCESSFUL" for r in results)
    line = json.dumps({"t0": t0, "t1": t1, "failed": failed}) + "\n"
    os.write(done_w, line.encode())  # < PIPE_BUF: one atomic write, never interleaved


def _read_exactly(fd, n, what):
    got = b""
    deadline = time.monotonic() + READY_TIMEOUT
    while len(got) < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"W5: {len(got)} of {n} clients {what} after "
                               f"{READY_TIMEOUT:g} s")
        chunk = os.read(fd, n - len(got))
        if not chunk:
            raise RuntimeError(f"W5: only {len(got)} of {n} clients {what} (others died)")
        got += chunk
    return got


def _read_lines(fd, n):
    buf = b""
    deadline = time.monotonic() + TIMEOUT
    while buf.count(b"\n") < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break  # every child closed its end: what is there is all there will be
        buf += chunk
    return [line for line in buf.decode().splitlines() if line]


def _reap(pids):
    """Wait for every child by pid; SIGKILL the ones still running after 10 s."""
    deadline = time.monotonic() + 10
    left = set(pids)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            left.discard(pid)
        time.sleep(0.01)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
