"""Connection limits of the server: MAX_CONNECTIONS and the handshake deadline
(CONNECT_TIMEOUT), with a real `tasks_server` and real sockets."""

import socket
import time

import psutil
import pytest

from django_tasks_shared.client.connection import StoreClient
from django_tasks_shared.client.options import derive_authkey, parse_address
from django_tasks_shared.exceptions import ServerUnavailable
from helpers import SECRET_KEY, ServerProcess, wait_until


def new_client(srv):
    return StoreClient(parse_address(srv.address), derive_authkey(SECRET_KEY, "default"),
                       timeout=5)


@pytest.mark.timeout(60)
def test_max_connections_refuses_with_the_reason_and_recovers():
    srv = ServerProcess(options={"WORKERS": 1, "MAX_CONNECTIONS": 6})
    held = []
    try:
        srv.wait_ready()
        wait_until(lambda: all(w["ready_at"] for w in new_client(srv).call("health")["workers"]),
                   20, message="the worker connected")
        refused = None
        for _ in range(10):  # the worker holds two already: its task thread, its notice thread
            client = new_client(srv)
            try:
                client.call("ping")
            except ServerUnavailable as exc:
                refused = exc
                break
            held.append(client)
        assert refused is not None
        assert len(held) == 4  # 6 minus the worker's two
        assert "refused the connection: the task server holds MAX_CONNECTIONS=6" in str(refused)
        for client in held:  # the held ones still work
            assert client.call("ping") == srv.popen.pid
        held.pop().close()
        wait_until(lambda: _pings(new_client(srv)), 10, message="a free slot again")
    finally:
        for client in held:
            client.close()
        srv.stop()
    assert "MAX_CONNECTIONS=6 reached" in srv.popen.stdout.read()


def _pings(client):
    try:
        return client.call("ping")
    except ServerUnavailable:
        return None
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_a_connection_that_never_authenticates_is_dropped_after_connect_timeout():
    srv = ServerProcess(options={"WORKERS": 1, "CONNECT_TIMEOUT": 1.0})
    socks = []
    try:
        srv.wait_ready()
        probe = new_client(srv)
        wait_until(lambda: all(w["ready_at"] for w in probe.call("health")["workers"]), 20,
                   message="the worker connected")
        probe.close()
        server = psutil.Process(srv.popen.pid)
        time.sleep(0.5)  # the connections of the readiness probes are gone
        baseline, threads = server.num_fds(), server.num_threads()
        for _ in range(20):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(srv.address)
            socks.append(sock)  # connect, then say nothing
        wait_until(lambda: server.num_fds() >= baseline + 20, 10,
                   message="the server holds the 20 connections")
        assert server.num_threads() == threads  # the event loop serves them all: no thread each
        started = time.monotonic()
        for sock in socks:
            sock.settimeout(5)
            data = b""
            while True:  # the challenge arrives, then the server hangs up
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            assert b"#CHALLENGE#" in data
        took = time.monotonic() - started
        assert took < 3.0, took
        wait_until(lambda: server.num_fds() <= baseline, 5,
                   message="the dropped connections closed in the server")
        assert _pings(new_client(srv)) == srv.popen.pid
    finally:
        for sock in socks:
            sock.close()
        srv.stop()


@pytest.mark.timeout(60)
def test_a_stock_multiprocessing_proxy_still_works():
    """The server speaks the stock manager protocol: `StoreManager(...).connect(); m.store()`
    with a stock proxy (create, incref, calls, decref) works next to the thin clients."""
    from django_tasks_shared.client.connection import StoreManager

    srv = ServerProcess(options={"WORKERS": 1})
    try:
        srv.wait_ready()
        manager = StoreManager(address=parse_address(srv.address),
                               authkey=derive_authkey(SECRET_KEY, "default"))
        manager.connect()
        store = manager.store()
        assert store.ping() == srv.popen.pid
        assert store.health()["server"]["pid"] == srv.popen.pid
        assert store.get("no-such-id") is None
        del store  # decref on a connection of its own
        assert _pings(new_client(srv)) == srv.popen.pid
    finally:
        srv.stop()
