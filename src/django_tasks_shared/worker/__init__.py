"""A worker process: Django set up, THREADS threads each claiming and running tasks.

    process.py    main(): the spec on stdin, django.setup(), the claim loop of each thread
    execution.py  one task run as Django's ImmediateBackend runs it; its outcome
    progress.py   set_progress() inside a task, coalesced to ~10 round trips a second

The supervisor starts `python -c "from django_tasks_shared.worker import main; main()"`; that
import path is kept across releases (a reload runs the new code under an old server).
"""


def __getattr__(name):
    if name == "main":
        from .process import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
