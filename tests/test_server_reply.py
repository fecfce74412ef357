"""The event loop's protocol edges, on a real socket in this process, each test with epoll and
with the portable poller (selectors and a pipe, as on macOS): a stopping server never answers a
request wrongly (found by the stress harness with --state-dir: a `get` of an existing task said
"does not exist" while the server wrote its final snapshot), a wrong authkey is told so,
requests pipelined on one connection are answered in order, also behind a long-poll, wake-ups
from other threads are never lost, and idle connections go cold and come back."""

import os
import secrets
import threading
import time

import pytest

from django_tasks_shared.client.connection import StoreClient, _connect
from django_tasks_shared.exceptions import ServerAuthenticationError, ServerUnavailable
from django_tasks_shared.protocol.methods import STORE_IDENT
from django_tasks_shared.protocol.records import new_record
from django_tasks_shared.protocol.wire import read_message, write_message
from django_tasks_shared.server.eventloop import EventLoop, listen
from django_tasks_shared.store import TaskStore
from helpers import temp_dir


@pytest.fixture(params=["epoll", "portable"])
def loop_server(request):
    """An EventLoop serving a TaskStore on a unix socket, in a thread of this process: with
    Linux's epoll and eventfd, and with the selectors + pipe fallback of other POSIX systems."""
    address = os.path.join(temp_dir(), "s.sock")
    authkey = secrets.token_bytes(32)
    store = TaskStore()
    store.set_meta(pid=os.getpid())
    loop = EventLoop(store, listen(address), authkey, handshake_timeout=2.0,
                     portable=request.param == "portable")
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        yield loop, store, StoreClient(address, authkey, timeout=2.0), address, authkey
    finally:
        loop.stop()
        assert loop.stopped.wait(5)
        if os.path.exists(address):
            os.unlink(address)


@pytest.mark.timeout(30)
def test_a_stopped_server_refuses_instead_of_answering(loop_server):
    loop, store, client, address, authkey = loop_server
    assert client.call("ping") == os.getpid()
    kept = _connect(address, authkey, 2.0)  # authenticated before the stop
    loop.stop()
    assert loop.stopped.wait(5)
    try:
        # A request on a connection kept from before: no reply at all, never a wrong one.
        with pytest.raises((EOFError, OSError)):
            write_message(kept.fileno(), (STORE_IDENT, "get", ("some-id",), {}))
            read_message(kept.fileno())
    finally:
        kept.close()
    with pytest.raises(ServerUnavailable):
        client.call("get", "some-id")


@pytest.mark.timeout(30)
def test_a_wrong_authkey_is_rejected_by_name(loop_server):
    loop, store, client, address, authkey = loop_server
    with pytest.raises(ServerAuthenticationError, match="rejected the authkey"):
        StoreClient(address, secrets.token_bytes(32), timeout=2.0).call("ping")
    assert client.call("ping") == os.getpid()  # the loop serves on


@pytest.mark.timeout(30)
def test_pipelined_requests_are_answered_in_order_behind_a_long_poll(loop_server):
    loop, store, client, address, authkey = loop_server
    store.enqueue(new_record(id="t1", task="x.y", args=[], kwargs={}))
    conn = _connect(address, authkey, 2.0)
    try:
        started = time.monotonic()
        # Two requests back to back: the wait parks for 0.3 s; the ping must not overtake it.
        # (Connection.recv reads exactly one message; wire.read_message may read ahead.)
        conn.send((STORE_IDENT, "wait", ("t1", 0.3), {}))
        conn.send((STORE_IDENT, "ping", (), {}))
        assert conn.recv() == ("#RETURN", store.get("t1"))
        assert time.monotonic() - started >= 0.25
        assert conn.recv() == ("#RETURN", os.getpid())
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_work_from_other_threads_reaches_parked_claims_and_waits_promptly(loop_server):
    """Tasks enqueued by another thread of the server (the scheduler, the supervisor's retries)
    wake the loop: a parked claim gets its task and a parked wait its record at once, every
    time (a lost wake-up would show as a claim answered only at its 5 s timeout)."""
    loop, store, client, address, authkey = loop_server
    store.register_worker("w1", os.getpid())
    worker = _connect(address, authkey, 10.0)
    waiter = _connect(address, authkey, 10.0)
    try:
        outcome = None
        for n in range(300):
            worker.send((STORE_IDENT, "finish_and_claim", ("w1", outcome, 5.0), {}))
            time.sleep(0.001 * (n % 3))  # parked, or not yet: both orders
            threading.Thread(target=store.enqueue, args=(
                new_record(id=f"t{n}", task="x.y", args=[], kwargs={}),)).start()
            started = time.monotonic()
            kind, record = worker.recv()
            assert kind == "#RETURN" and record["id"] == f"t{n}", record
            waiter.send((STORE_IDENT, "wait", (f"t{n}", 5.0), {}))
            finished = {"id": f"t{n}", "status": "SUCCESSFUL", "finished_at": time.time(),
                        "return_value": n}
            threading.Thread(target=store.polls.claim_now, args=("w1", finished)).start()
            kind, done = waiter.recv()
            assert done["status"] == "SUCCESSFUL" and done["return_value"] == n
            assert time.monotonic() - started < 1.0, n
    finally:
        worker.close()
        waiter.close()


@pytest.mark.timeout(30)
def test_idle_connections_go_back_to_cold_and_come_back_when_they_call(loop_server):
    """A connection idle for a sweep or two leaves the main epoll (a deploy closing every idle
    web connection at once is then served 32 a turn); its next call brings it back. A parked
    long-poll is never demoted."""
    loop, store, client, address, authkey = loop_server
    loop.idle_sweep = 0.1
    loop._next_sweep = 0  # the next turn sweeps, then every 0.1 s
    assert client.call("ping") == os.getpid()
    store.enqueue(new_record(id="t1", task="x.y", args=[], kwargs={}))
    parked = _connect(address, authkey, 5.0)
    try:
        parked.send((STORE_IDENT, "wait", ("t1", 3.0), {}))

        def hot_peers():
            return sorted(p.hot for p in list(loop.peers.values()))

        deadline = time.monotonic() + 2
        while hot_peers() != [False, True] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hot_peers() == [False, True]  # the idle client went cold, the parked one not
        assert client.call("ping") == os.getpid()  # served from cold, promoted again
        assert hot_peers() == [True, True]
        assert parked.recv()[0] == "#RETURN"  # the wait times out normally
    finally:
        parked.close()
