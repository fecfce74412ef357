"""The real client of the storm: enqueue a no-op task and `wait()` for it, over and over.

    python -m stress.storm.probe      (started by stress/storm/run.py, never by hand)
      env STRESS_ADDRESS / STRESS_OPTIONS -> stress.harness.settings -> the server under the storm
      loop: t0 = monotonic(); noop.enqueue(); django_tasks_shared.wait(result); sleep(interval)
      stdout: "ready" once warmed up; at "stop" (or EOF) on stdin, one JSON line of samples
              [[t0, seconds or null, error or null], ...]

A process of its own, so that the storm's 5,000 sockets and its selectors loop do not share a
GIL with the client being timed: what we measure is the server. t0 is time.monotonic(), one
clock for every process on the host, so the storm tool can cut the samples into its phases.
"""

import json
import os
import sys
import threading
import time

SAMPLE_TIMEOUT = 10.0  # seconds: a wait() longer than this counts as failed


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stress.harness.settings")
    import django

    django.setup()
    from django_tasks_shared import wait
    from stress.common.tasks import noop

    interval = float(os.environ.get("STORM_PROBE_INTERVAL", "0.01"))
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    samples = []
    for _ in range(20):  # warm-up: the connection, imports, the workers' first tasks
        wait(noop.enqueue(), SAMPLE_TIMEOUT)
    print("ready", flush=True)
    while not stop.is_set():
        started = time.monotonic()
        try:
            wait(noop.enqueue(), SAMPLE_TIMEOUT)
        except Exception as exc:  # ServerUnavailable, TimeoutError: the sample failed
            samples.append([started, None, f"{type(exc).__name__}: {exc}"[:300]])
        else:
            samples.append([started, time.monotonic() - started, None])
        stop.wait(interval)
    print(json.dumps(samples), flush=True)


if __name__ == "__main__":
    main()
