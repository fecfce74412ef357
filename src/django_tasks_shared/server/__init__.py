"""The server process: network core and start-up (no Django, no client code).

    process.py    serve(): the store, STATE_DIR, the event loop, supervisor and scheduler
                  threads, the drain; main(): the entry point of a launched server
    eventloop.py  one thread, one poller, every connection (hot and cold sets)
    dispatch.py   a request to the store; long-polls parked instead of a thread each
    peer.py       one connection: buffers, framing, the handshake
    poller.py     epoll + eventfd on Linux; selectors + a pipe elsewhere

`python -c "from django_tasks_shared.server import main; main()"` is the command a launcher
runs (client/launcher.py): that import path is kept across releases.
"""


def __getattr__(name):
    if name in ("main", "serve", "AlreadyRunning"):
        from . import process as module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
