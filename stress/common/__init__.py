"""What several tools of stress/ share, so that no tool copies another's code.

    paths.py   ROOT, the repository root (the directory holding stress/): the tools chdir
               there and put it on the PYTHONPATH of every process they start, so that
               servers, workers and clients import `stress.*` the same way
    base_settings.py  the Django settings that the harness's and the bench's settings (and so
               the profilers') have in common; each adds its SECRET_KEY and TASKS
    tasks.py   the no-op, CPU-burning and square tasks (and the raw executor's twins) that
               the benchmark, the demo, the storm's probe and the profilers enqueue; a worker
               imports them by their path, stress.common.tasks.<name>
    layout.py  internal(new path, old path): a module of django_tasks_shared at its path in
               this layout or in the flat one of older checkouts (profile_worker --src)
"""
