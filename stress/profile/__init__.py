"""The profilers: what the server and a worker spend per task, and where (cProfile).

    python -m stress.profile_server  (stress/profile_server.py ──> server.py)
      parent: `python -m stress.profile.server --serve` = a real tasks_server (2 workers,
              stress/bench/settings.py) under cProfile ──> W1 through Django's API, --repeat
              times ──> psutil CPU of server, workers, this process per task; the profile
    python -m stress.profile_worker  (stress/profile_worker.py ──> worker.py)
      in process: execute() on records shaped like a worker's ──> CPU per task, cProfile
      end to end: the bench's systems (stress/bench/runner.py) ──> workers' CPU per task
      settings.py: the bench's settings, --quiet-task-log lowers Django's task log
      --src DIR: django_tasks_shared from an older checkout; internals it reaches are imported
                 at this layout's path or the older one's (stress/common/layout.py)

The tasks are stress/common/tasks.py. Not tests: they print figures; every process they start
is stopped by pid.
"""
