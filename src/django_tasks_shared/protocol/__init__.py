"""What every process of a deployment agrees on, as plain data: no Django, no I/O of its own.

    wire.py          message framing (`multiprocessing.connection`'s) for client and server
    methods.py       the store's method names a client may call, the pinned object's id
    status.py        record statuses, STOP, and the class paths of the exceptions the server
                     records (persisted in records and journals: one home, derived from the
                     classes, pinned by tests)
    records.py       the record and outcome shapes (TypedDicts) and `new_record`
    retry_policy.py  the rules of a record's retry policy (back-off, what is retried)
    config.py        `Config`: a backend's validated OPTIONS, and the JSON spec a launched
                     server and its workers receive
    paths.py         where the embedded server's socket and side files live; workers' sys.path
    text.py          counts in words (plural) for log lines and reports

Imported by the client, the server, the workers and the web page alike; it imports nothing of
this package but `exceptions` (a leaf module), which import-linter checks (pyproject.toml).
"""
