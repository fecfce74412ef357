"""W1 portable: waiting the way code that must run on ANY Django Tasks backend waits.

Two patterns, both after enqueuing N no-op tasks (as in W1), both with Django's public API only
(TaskResult.refresh(); Huey: Result.is_ready(); raw executor: Future.done()):

    every pending per pass  until none is pending: refresh every pending result once, drop the
                            finished ones, sleep 1 ms          -> w1_portable_tps
    in order                for each result in enqueue order: refresh it until it is finished,
                            1 ms between two refreshes of an unfinished one (what a loop over
                            the results does)                  -> w1_inorder_tps
    and the CPU per task of the enqueuing process in each

The first one refreshes the whole pending list on every pass, which costs django-tasks-local's
pool (its refresh() takes the pool's lock) more than ours: reported beside the in-order one so
that neither flatters either side. Both run next to W1's `wait_all` mode on the same system in
the same repeat, so every ratio comes from the same machine state. The systems give
`is_done(result)`; for the Django backends that is one refresh() and a look at the status.
"""

import time

POLL_INTERVAL = 0.001  # the 1 ms of issue 9 ("refresh() every 1 ms")
FINISHED = ("SUCCESSFUL", "FAILED")


def refresh_done(result):
    """One TaskResult.refresh() (a round trip on a shared backend), then: is it finished?"""
    result.refresh()
    return result.status.value in FINISHED


def wait_polling(results, is_done, interval=POLL_INTERVAL, timeout=60.0):
    """Poll every pending result once per pass, sleeping `interval` between passes."""
    pending = list(results)
    deadline = time.monotonic() + timeout
    while True:
        pending = [r for r in pending if not is_done(r)]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(results)} results still pending "
                               f"after {timeout:g} s")
        time.sleep(interval)


def wait_in_order(results, is_done, interval=POLL_INTERVAL, timeout=60.0):
    """Refresh each result in order until it is finished, sleeping `interval` in between."""
    deadline = time.monotonic() + timeout
    for i, result in enumerate(results):
        while not is_done(result):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(results) - i} of {len(results)} results still "
                                   f"pending after {timeout:g} s")
            time.sleep(interval)


def w1_portable(system, n):
    out = {}
    for name, wait in (("portable", wait_polling), ("inorder", wait_in_order)):
        cpu0, t0 = time.process_time(), time.perf_counter()
        results = [system.enqueue_noop() for _ in range(n)]
        wait(results, system.is_done)
        t1, cpu1 = time.perf_counter(), time.process_time()
        bad = sum(system.status(r) != "SUCCESSFUL" for r in results)
        if bad:
            raise RuntimeError(f"W1 {name} {system.name}: {bad} of {n} tasks did not succeed")
        out[f"w1_{name}_tps"] = n / (t1 - t0)
        out[f"w1_{name}_client_cpu_us"] = (cpu1 - cpu0) / n * 1e6
    return out
