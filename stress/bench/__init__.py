"""The benchmark (`python -m stress.bench`): django-tasks-shared against django-tasks-local, a
raw ProcessPoolExecutor and Huey + Redis, on this machine, in one run.

    __main__.py ──> runner.py: settings.py (django.setup), the systems Shared, Local, Raw
                    (runner.py) and Huey (huey.py, huey_app.py: a private redis-server and
                    huey_consumer); then per repeat, in rotating order, per system:
        W1 + W1 portable (portable.py) + W2 + W3 + W4 (a child: `python -m stress.bench
        --w4-child`) + W5 (w5.py, ours only: `--w5-child` forks 64 clients)
        W1 with a STATE_DIR (durable.py): one embedded server per FSYNC mode, paired per repeat
      CPU of the other processes, to the ns (cpu.py)
    samples {system: [figures per repeat]} ──> report.py: the table, the ratios, PASS/MISS per
        target of issue 2, targets.py: the targets of issue 9 ("met k/N"); --json FILE

The tasks all systems run are stress/common/tasks.py; the demo and the profilers use this
benchmark's settings.py too. Every process it starts is stopped by pid.
"""
