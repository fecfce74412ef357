"""Modules of django_tasks_shared that the tools reach inside the package, imported at their path
in this checkout's layout or, failing that, at their path in the flat layout of older checkouts
(commit f6115e1 and before), so that `python -m stress.profile_worker --src OLD/src` measures an
older checkout too.

    internal("django_tasks_shared.worker.execution", "django_tasks_shared.execution")
        -> the first that exists; a module that exists but fails to import raises as usual
"""

import importlib


def internal(*paths):
    """The first of `paths` (dotted module paths, newest layout first) that exists."""
    for path in paths[:-1]:
        try:
            return importlib.import_module(path)
        except ModuleNotFoundError as exc:
            # Only "this path does not exist in this layout" moves on to the next path.
            if exc.name is None or not (path == exc.name or path.startswith(exc.name + ".")):
                raise
    return importlib.import_module(paths[-1])
