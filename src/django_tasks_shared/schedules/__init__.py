"""Periodic tasks (OPTIONS["SCHEDULE"]).

    entries.py    validate an entry, its next due time (no Django: client and server)
    resolve.py    import each entry's task and complete the entry (client side, Django)
    scheduler.py  the server's thread that enqueues due entries (server side, no Django)
"""
