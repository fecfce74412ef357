"""The state the server holds: the queue, the running tasks, the results, the workers (the
server process only: no IPC, no Django, unit-tested directly). See core.py for the parts.
"""

from .core import TaskStore

__all__ = ["TaskStore"]
