"""A stopping server never answers a new connection at all rather than answer wrongly (found
by the stress harness with --state-dir: a `get` of an existing task said "does not exist"
while the server wrote its final snapshot)."""

import os
import secrets
import threading

import pytest

from django_tasks_shared import server as server_module
from django_tasks_shared.client import StoreClient, _connect
from django_tasks_shared.exceptions import ServerUnavailable
from django_tasks_shared.store import TaskStore
from django_tasks_shared.wire import read_message
from helpers import temp_dir


@pytest.fixture
def stopping_server():
    """A StoreServer on a real socket in this process; the test sets its stop event."""
    address = os.path.join(temp_dir(), "s.sock")
    authkey = secrets.token_bytes(32)
    old_store = server_module._store
    server_module._store = store = TaskStore()
    store.set_meta(pid=os.getpid())
    manager = server_module.StoreManager(address=address, authkey=authkey)
    server = server_module.StoreServer(manager._registry, manager._address, manager._authkey,
                                       manager._serializer)
    server.id_to_obj[server_module.STORE_IDENT] = (store, frozenset(server_module.EXPOSED), None)
    server.stop_event = threading.Event()
    threading.Thread(target=server.accepter, daemon=True).start()
    try:
        yield server, StoreClient(address, authkey, timeout=2.0), address, authkey
    finally:
        # The accepter thread stays blocked in accept() (a daemon); closing the listener under
        # it would make it retry every 10 ms for the rest of the session. The socket file goes
        # now (the listener's finalizer, run once), not at exit after its directory is gone.
        server.listener._listener._unlink()
        server_module._store = old_store


def test_a_stopping_server_drops_new_connections_instead_of_answering_none(stopping_server):
    server, client, address, authkey = stopping_server
    assert client.call("ping") == os.getpid()
    client.close()
    server.stop_event.set()  # as during the final snapshot
    conn = _connect(address, authkey, 2.0)  # the handshake still succeeds...
    try:
        # ...but nothing may follow it: before the fix the server sent ('#RETURN', None) here,
        # which a client read as the reply to its first call (get -> "does not exist").
        with pytest.raises((EOFError, OSError)):
            read_message(conn.fileno())
    finally:
        conn.close()
    with pytest.raises(ServerUnavailable):
        client.call("get", "some-id")
