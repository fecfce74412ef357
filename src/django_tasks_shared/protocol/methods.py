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
                  "cancel", "results", "overview",
                  # v0.3: a record with unique / limit / after (a 0.2 server does not expose it:
                  # the client then refuses such a task with a clear error, client/workflows.py)
                  "enqueue_workflow")
# Called by worker processes. `report_and_claim` (0.2) is finish_and_claim with a claim token
# (thread, sequence number): a repeated claim gets the task already handed out for it, so a
# worker can resend a claim whose reply was lost; a worker falls back to finish_and_claim on a
# server that does not expose it (0.1.0). take_notices: new in 0.2; a worker under a 0.1.0
# server, which answers "not exposed", sends no end notices: that server keeps none.
WORKER_METHODS = ("finish_and_claim", "worker_failed", "save_metadata", "take_notices",
                  "report_and_claim")
EXPOSED = CLIENT_METHODS + WORKER_METHODS

# Idempotent calls (an enqueue is idempotent per task id, enqueue_workflow too: a unique key's
# holder is the same task again), which the client repeats on a new connection: once when a
# kept connection turns out dead (the server restarted since), and for up to 3 x
# CONNECT_TIMEOUT in all while the server does not answer (a stall; see client/connection.py).
# Never a worker's claim (worker/claims.py resends it with its token), a cancel (its answer
# says whether IT cancelled), a reload, or save_metadata (progress is best effort: the worker's
# flusher sends it again). The page's reads are among them: a web thread kept from before a
# restart (gthread, runserver keep-alive) would otherwise show the "does not answer" banner on
# its first refresh after it.
RETRY_ON_NEW_CONNECTION = frozenset({"enqueue", "enqueue_workflow", "get", "get_many", "wait",
                                     "health", "ping", "metadata", "results", "overview",
                                     "worker_failed"})
