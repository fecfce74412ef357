"""The server's API as the wire names it: every client (web process, shell, worker, a stock
`multiprocessing.managers` proxy) calls the pinned object STORE_IDENT by these method names.

A name here is a promise across one release: `tasks_reload` starts workers from new code
against a server still running the old one (tests/test_mixed_versions.py), so a new client or
worker may only call what the previous release exposed, or must fall back when it is missing.
"""

STORE_IDENT = "store"  # the id under which the server pins its TaskStore
REFUSED = "#REFUSED#"  # sent by a server instead of its challenge, with the reason

# Called by web processes, shells and commands.
CLIENT_METHODS = ("enqueue", "get", "get_many", "wait", "ping", "health", "reload", "metadata",
                  "cancel", "results", "overview")
# Called by worker processes (take_notices: new in 0.2; a worker under a 0.1.0 server, which
# answers "not exposed", sends no end notices: that server keeps none).
WORKER_METHODS = ("finish_and_claim", "worker_failed", "save_metadata", "take_notices")
EXPOSED = CLIENT_METHODS + WORKER_METHODS

# Calls repeated once on a new connection when a kept one turns out dead (the server restarted
# since): idempotent ones only (an enqueue is idempotent per task id). Never a worker's claim.
RETRY_ON_NEW_CONNECTION = frozenset({"enqueue", "get", "get_many", "wait", "health", "ping"})
