"""The client side: what runs in every Django process that uses the backend (runserver, gunicorn
workers, shells, management commands, and the workers when they read results).

    backend.py     the Django task backends (enqueue, get_result): one round trip each
    waiting.py     wait(), wait_all(), cancel()
    connection.py  StoreClient: one connection per (process, thread, address), with timeouts
    launcher.py    starting the embedded / AUTOSTART server on demand
    options.py     OPTIONS -> Config (protocol/config.py)
    results.py     record <-> django.tasks.TaskResult
    retry.py       the @retry decorator
    progress.py    progress(result)

Nothing here imports the server's code: the two meet only on the wire (protocol/).
"""
