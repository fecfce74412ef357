"""Clear errors for what a newcomer hit (issue 15), each against real processes: arguments
nested too deep, an ADDRESS under a regular file, the first call after the server died, and a
handshake frame over its limit (not a MAX_PAYLOAD matter)."""

import os
import signal
import socket
import subprocess
import sys

import pytest
from django.tasks.exceptions import InvalidTaskBackend

from django_tasks_shared.exceptions import ServerStalled, ServerUnavailable
from django_tasks_shared.protocol.paths import UnsafePath, make_socket_dir
from helpers import MANAGE, ServerProcess, child_env, running_server, tasks_settings, temp_dir
from testproject import tasks


def nested(depth):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.timeout(60)
def test_arguments_nested_too_deep_name_the_task_and_store_nothing():
    with running_server({"WORKERS": 1}) as srv, srv.settings():
        for args, kwargs in (((nested(5000),), {}), ((), {"x": nested(5000)})):
            with pytest.raises(ValueError) as caught:
                tasks.add.enqueue(*args, **kwargs)
            text = str(caught.value)
            assert "testproject.tasks.add" in text and "nested too deeply" in text
            assert "nothing was enqueued" in text and "Pass flatter data" in text
            assert not isinstance(caught.value, RecursionError)
        cyclic: list = []
        cyclic.append(cyclic)
        with pytest.raises(ValueError, match="contains itself"):
            tasks.add.enqueue(cyclic, 1)
        assert srv.client().call("health")["counters"]["enqueued"] == 0
        # a merely deep argument is fine
        assert tasks.add.enqueue(nested(50), []).id


@pytest.mark.timeout(60)
def test_an_address_under_a_regular_file_is_a_clear_error_at_configuration():
    address = "/etc/passwd/tasks.sock"
    with tasks_settings(address, {"WORKERS": 1}), pytest.raises(InvalidTaskBackend) as caught:
        tasks.add.enqueue(1, 2)
    text = str(caught.value)
    assert "/etc/passwd is a file, not a directory" in text and address in text
    assert "Choose a path in a directory" in text

    # tasks_server stops there too (as Django does for any bad TASKS entry, the system checks
    # load the backend: its error is the last line), before any makedirs can fail
    done = subprocess.run([sys.executable, MANAGE, "tasks_server"], env=child_env(address),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("django.tasks.exceptions.InvalidTaskBackend: TASKS['default']: ")
    assert "/etc/passwd is a file, not a directory" in last
    assert "FileExistsError" not in done.stderr and "NotADirectoryError" not in done.stderr

    # a file that appears in the way after the configuration: the start says so
    directory = temp_dir()
    blocker = os.path.join(directory, "run")
    with open(blocker, "w"):
        pass
    with pytest.raises(UnsafePath, match=f"{blocker} is a file, not a directory"):
        make_socket_dir(os.path.join(blocker, "deeper", "tasks.sock"))


@pytest.mark.timeout(60)
def test_the_first_call_after_the_server_died_says_no_server_is_listening():
    """A kept connection to a dead server: the write fails (EPIPE) before anything was sent,
    so any call is tried once more on a new connection, which finds nothing listening."""
    srv = ServerProcess(options={"WORKERS": 1})
    try:
        srv.wait_ready()
        client = srv.client()
        assert client.call("ping") == srv.popen.pid
        other = srv.client()
        assert other.call("ping") == srv.popen.pid
        srv.popen.send_signal(signal.SIGKILL)
        srv.popen.wait(10)
        for method, args, who in (("cancel", ("0" * 32,), client), ("get", ("0" * 32,), other)):
            with pytest.raises(ServerUnavailable) as caught:
                who.call(method, *args)
            text = str(caught.value)
            assert "no server is listening there" in text and srv.address in text, text
            assert "BrokenPipe" not in text and "ConnectionReset" not in text
            assert "Start it with `manage.py tasks_server`" in text
            assert not caught.value.maybe_applied
            assert not isinstance(caught.value, ServerStalled)
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_a_stall_is_reported_as_a_stall():
    address = os.path.join(temp_dir(), "tasks.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(16)  # connects succeed, nobody ever answers
    try:
        with tasks_settings(address, {"WORKERS": 1, "CONNECT_TIMEOUT": 0.5}), \
                pytest.raises(ServerStalled) as caught:
            tasks.add.get_result("0" * 32)
    finally:
        listener.close()
    text = str(caught.value)
    assert "no answer within 0.5 s (CONNECT_TIMEOUT) on 3 connections" in text, text
    assert "stalled" in text and "Start it with" not in text
    assert not caught.value.maybe_applied  # the handshake never finished: nothing went out


@pytest.mark.timeout(60)
def test_a_handshake_frame_over_its_limit_is_logged_as_what_it_is():
    srv = ServerProcess(options={"WORKERS": 1})
    try:
        srv.wait_ready()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(srv.address)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # b"GET " read as a length
            try:
                while sock.recv(4096):
                    pass  # the challenge, then the close
            except ConnectionResetError:
                pass
        assert srv.client().call("ping") == srv.popen.pid
    finally:
        srv.stop()
    output = srv.popen.stdout.read()
    line = next(line for line in output.splitlines() if "dropped a connection" in line)
    assert "before it authenticated" in line and "1195725856 bytes" in line
    assert "handshake's limit of 256" in line and "MAX_PAYLOAD" not in line
