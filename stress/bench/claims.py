"""Claim latency with 100,000 limited tasks pending (`python -m stress.bench.claims`).

The store in this process (no IPC: the figure is the server's CPU per claim, the part a limit
could make slower). Each scenario fills a TaskStore, then times N claims of the kind it names,
each followed by the report of the claimed task (as a worker's next finish_and_claim does):

    empty         a plain task enqueued and claimed, nothing else pending (the baseline)
    plain-100k    the same with 100,000 plain tasks deferred an hour (a big queue, no limit)
    held-1-key    the same with 100,000 @limit(concurrency=1) tasks of ONE key whose slot is
                  held: a claim must not walk past them
    held-1000     100,000 limited tasks over 1,000 keys (100 each), every slot held
    rate-full     100,000 tasks of one key limited to 10/h, the window full (a timer armed)
    limited-turn  100,000 limited tasks over 1,000 keys at concurrency 1: each claim takes the
                  next head of a key that a report just freed (release + offer + claim)

With --src DIR, DIR/src is imported instead of this checkout's (main's code: the scenarios it
cannot run say so). Reports the median and p99 of the timed claims in microseconds.
"""

import argparse
import gc
import statistics
import sys
import time


def _store_modules():
    from django_tasks_shared.protocol.records import new_record
    from django_tasks_shared.store import TaskStore
    return TaskStore, new_record


def _record(new_record, task_id, limit=None, run_after=None):
    record = new_record(id=task_id, task="app.tasks.t", args=[], kwargs={}, run_after=run_after)
    if limit is not None:
        record["limit"] = limit
    return record


def _put(store, record):
    if "limit" in record:
        if not hasattr(store, "flows"):
            raise NotImplementedError("this code has no limits")
        store.flows.enqueue(record)
    else:
        store.enqueue(record)


def _ok(task_id):
    return {"id": task_id, "status": "SUCCESSFUL", "finished_at": None, "return_value": None}


def _time_plain_claims(store, new_record, n):
    """Enqueue one plain task, claim it (reporting the previous), n times."""
    times, outcome = [], None
    for i in range(n):
        store.enqueue(_record(new_record, f"p{i}"))
        started = time.perf_counter()
        got = store.polls.claim_now("w", outcome)
        times.append(time.perf_counter() - started)
        assert got["id"] == f"p{i}", got
        outcome = _ok(got["id"])
    store.polls.claim_now("w", outcome)
    return times


def scenario(name, n, size):
    TaskStore, new_record = _store_modules()
    store = TaskStore(max_results=1000)
    store.register_worker("w", pid=1)
    if name == "plain-100k":
        later = time.time() + 3600
        for i in range(size):
            store.enqueue(_record(new_record, f"d{i}", run_after=later))
    elif name in ("held-1-key", "held-1000", "rate-full", "limited-turn"):
        keys = 1 if name in ("held-1-key", "rate-full") else 1000
        spec = ({"concurrency": None, "rate": [10, 3600.0]} if name == "rate-full"
                else {"concurrency": 1, "rate": None})
        for i in range(size):
            _put(store, _record(new_record, f"l{i}", dict(spec, key=f"k{i % keys}")))
        holders = 10 if name == "rate-full" else keys
        for h in range(holders):  # take every slot (or fill the window)
            worker = f"h{h}"
            store.register_worker(worker, pid=1)
            assert store.polls.claim_now(worker, None)["id"].startswith("l")
            if name == "rate-full":  # finished, but its start stays in the window
                store.retire_worker(worker, "bench")
                store.polls.claim_now(worker, _ok(f"l{h}"))
        if name == "limited-turn":
            return _time_limited_turns(store, n, keys)
    gc.collect()
    gc.disable()
    try:
        return _time_plain_claims(store, new_record, n)
    finally:
        gc.enable()


def _time_limited_turns(store, n, keys):
    """Worker h<k> reports its task of key k and claims: the next task of key k (its slot was
    just freed), n times round the keys."""
    running = {f"h{h}": None for h in range(keys)}
    for worker in running:
        running[worker] = store.workers[worker]["current"] and next(iter(
            store.workers[worker]["current"]))
    gc.collect()
    gc.disable()
    times = []
    try:
        for i in range(n):
            worker = f"h{i % keys}"
            started = time.perf_counter()
            got = store.polls.claim_now(worker, _ok(running[worker]))
            times.append(time.perf_counter() - started)
            running[worker] = got["id"]
    finally:
        gc.enable()
    return times


SCENARIOS = ("empty", "plain-100k", "held-1-key", "held-1000", "rate-full", "limited-turn")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", help="import django_tasks_shared from DIR/src")
    parser.add_argument("--claims", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="best median of N runs")
    args = parser.parse_args()
    if args.src:
        sys.path.insert(0, f"{args.src}/src")
    import django_tasks_shared

    print(f"django_tasks_shared from {django_tasks_shared.__file__}; {args.size:,} pending, "
          f"{args.claims:,} claims timed, best of {args.repeat}")
    print(f"{'scenario':<14} {'median us':>10} {'p99 us':>10}")
    for name in SCENARIOS:
        try:
            runs = [sorted(scenario(name, args.claims, args.size)) for _ in range(args.repeat)]
        except NotImplementedError as exc:
            print(f"{name:<14} {'-':>10} {'-':>10}  ({exc})")
            continue
        best = min(runs, key=statistics.median)
        print(f"{name:<14} {statistics.median(best) * 1e6:>10.2f} "
              f"{best[int(len(best) * 0.99)] * 1e6:>10.2f}")


if __name__ == "__main__":
    main()
