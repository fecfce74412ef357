"""W1 portable: waiting the way code that must run on ANY Django Tasks backend waits.

    enqueue N no-op tasks (as in W1), then, until none is pending:
        refresh every pending result once (TaskResult.refresh(): Django's public API only;
        Huey: Result.is_ready(); raw executor: Future.done()), drop the finished ones,
        sleep 1 ms
    -> w1_portable_tps, and the CPU per task of the enqueuing process while doing so

It runs next to W1's `wait_all` mode on the same system in the same repeat, so the two ratios
(portable ours/local and wait_all ours/local) come from the same machine state. The systems give
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


def w1_portable(system, n):
    cpu0, t0 = time.process_time(), time.perf_counter()
    results = [system.enqueue_noop() for _ in range(n)]
    wait_polling(results, system.is_done)
    t1, cpu1 = time.perf_counter(), time.process_time()
    bad = sum(system.status(r) != "SUCCESSFUL" for r in results)
    if bad:
        raise RuntimeError(f"W1 portable {system.name}: {bad} of {n} tasks did not succeed")
    return {"w1_portable_tps": n / (t1 - t0), "w1_portable_client_cpu_us": (cpu1 - cpu0) / n * 1e6}
