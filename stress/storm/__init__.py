"""The connection storm (`python -m stress.storm`): thousands of connections at once against a
real `tasks_server`, while a real client is timed, measured against the targets of issue 9.

    __main__.py ──> run.py (StormRun)
      ├─ server: `tasks_server` with stress/harness/settings.py on a private socket (or --address)
      ├─ probe.py, a process of its own: noop.enqueue() + wait() every 10 ms, timed
      ├─ Sampler thread (run.py): the server's threads and RSS every 50 ms
      └─ phases raw, half, idle: net.py opens N sockets from one selectors loop, holds them,
         closes them at once; then SIGTERM with the idle ones still open
    report dict ──> report.py: probe percentiles, PASS/MISS per target, the text; --json FILE
"""
