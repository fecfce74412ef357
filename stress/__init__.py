"""Tools that load, break and measure django-tasks-shared; run from the repository root.

    python -m stress                  harness/   many clients + injected faults -> invariants
    python -m stress.bench            bench/     against django-tasks-local, a raw executor, Huey
    python -m stress.storm            storm/     thousands of connections at once, a client timed
    python -m stress.profile_server   profile/   the server's CPU per task, and its profile
    python -m stress.profile_worker   profile/   a worker's CPU per task, and its profile
    python -m stress.demo             demo.py    processes sharing one embedded server

    common/   what several of them use: the repository root, the Django settings they share,
              the tasks of the bench, demo, storm and profilers, imports across layouts

Each subpackage's docstring draws its data flow; docs/stress.md explains the tools and their
figures. Processes they start are stopped by pid.
"""
