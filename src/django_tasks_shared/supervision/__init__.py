"""The worker processes, as the server supervises them (server process; psutil, no Django).

    supervisor.py  the supervisor thread: spawn, reap, time limits, recycling, cancel's kills
    memwatch.py    MAX_TASK_MEMORY: a fast RSS sampler thread
    reload.py      tasks_reload / SIGHUP: start new workers, retire the old ones
    rss.py         RSS of a worker with its children (both samplers use it)
"""
