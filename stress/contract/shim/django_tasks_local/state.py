"""django-tasks-local's executor registry: its tests clear it; ours has none (a server holds the
state), so clearing it changes nothing."""

_executor_states: dict = {}
