"""What a reply promises: the change it acknowledges is in the journal already, and a stopping
server never answers at all rather than answer wrongly. Both were broken while the stock
managers.Server served the connections instead of StoreServer (found by the stress harness
with --state-dir: lost and doubly run tasks after a SIGKILL, "does not exist" during a stop)."""

import os
import secrets
import signal
import threading
import time

import psutil
import pytest

from django_tasks_shared import server as server_module
from django_tasks_shared.client import StoreClient, _connect
from django_tasks_shared.exceptions import ServerUnavailable
from django_tasks_shared.statedir import StateDir
from django_tasks_shared.store import TaskStore, new_record
from django_tasks_shared.wire import read_message
from helpers import ServerProcess, stop_process, temp_dir


def deferred_record():
    # run_after an hour ahead: nothing runs, so the state holds exactly what was enqueued
    return new_record(id=secrets.token_hex(16), task="testproject.tasks.add", args=[1, 2],
                      kwargs={}, run_after=time.time() + 3600)


def test_every_acknowledged_enqueue_is_in_the_journal_at_a_sigkill_right_after():
    state_dir = os.path.join(temp_dir(), "state")
    srv = ServerProcess(options={"STATE_DIR": state_dir, "WORKERS": 1}).wait_ready()
    workers = []
    try:
        client = srv.client()
        ids = []
        for _ in range(200):  # well within the flusher's 1 s: only the per-reply commit helps
            record = deferred_record()
            client.call("enqueue", record)
            ids.append(record["id"])
        workers = psutil.Process(srv.popen.pid).children(recursive=True)
        srv.popen.send_signal(signal.SIGKILL)
        srv.popen.wait(10)
    finally:
        stop_process(srv.popen)
        for proc in workers:  # orphans now: not found through the dead server any more
            try:
                proc.kill()
            except psutil.Error:
                pass
    restored = StateDir(state_dir).read().records
    missing = [i for i in ids if i not in restored]
    assert not missing, f"{len(missing)} of {len(ids)} acknowledged enqueues not in the journal"
    assert all(restored[i]["status"] == "READY" for i in ids)


@pytest.fixture
def stopping_server():
    """A StoreServer on a real socket, in this process, whose stop event is already set."""
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
        server.listener.close()
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
