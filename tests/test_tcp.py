"""TCP addresses: a real server on loopback, fast new connections, and the safety checks."""

import socket
import time

import pytest
from django.tasks import task_backends
from django.tasks.exceptions import InvalidTaskBackend

from django_tasks_shared import wait
from django_tasks_shared.client.connection import StoreClient
from django_tasks_shared.client.options import derive_authkey
from helpers import SECRET_KEY, ServerProcess, tasks_settings
from testproject import tasks


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_tcp_loopback_server_end_to_end_and_fast_new_connections():
    port = free_port()
    srv = ServerProcess(address=f"127.0.0.1:{port}", options={"WORKERS": 1})
    try:
        srv.wait_ready()
        with srv.settings():
            result = wait(tasks.add.enqueue(20, 22), timeout=20)
            assert result.return_value == 42
            assert tasks.add.get_result(result.id).return_value == 42
        # Without TCP_NODELAY every new connection stalls ~40 ms (Nagle + delayed ACK):
        # the handshake's small writes wait for an ACK. Ours must not.
        key = derive_authkey(SECRET_KEY, "default")
        costs = []
        for _ in range(5):
            start = time.perf_counter()
            StoreClient(("127.0.0.1", port), key).call("ping")
            costs.append(time.perf_counter() - start)
        assert sorted(costs)[2] < 0.025, costs
    finally:
        srv.stop()


@pytest.mark.timeout(30)
def test_non_loopback_tcp_address_gets_a_system_check_warning():
    with tasks_settings("10.1.2.3:9000", {"WORKERS": 1}):  # never contacted: only checked
        messages = task_backends["default"].check()
    assert [m.id for m in messages] == ["django_tasks_shared.W001"]
    assert "not loopback" in messages[0].msg
    for loopback in ("127.0.0.1:9000", "127.0.0.2:9000", "localhost:9000"):
        with tasks_settings(loopback, {"WORKERS": 1}):
            assert task_backends["default"].check() == [], loopback
    with tasks_settings("tasks.internal.example:9000", {"WORKERS": 1}):
        assert [m.id for m in task_backends["default"].check()] == ["django_tasks_shared.W001"]


@pytest.mark.timeout(30)
def test_ipv6_address_is_refused_with_a_clear_error():
    with tasks_settings("[::1]:9000", {"WORKERS": 1}):
        with pytest.raises(InvalidTaskBackend, match="IPv6 is not supported"):
            task_backends["default"]
