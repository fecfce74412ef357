"""The embedded runtime directory and the AUTOSTART log (issue 15): a directory another user
made first (in a world-writable TMPDIR), a symlink, or a loose mode is refused with the path,
the owner and the fix, and never chmod'ed; the log is never opened through a symlink.
As root, "another user" is a directory chown'ed to nobody (65534)."""

import os
import stat

import pytest
from django.tasks.exceptions import InvalidTaskBackend

from django_tasks_shared.client import launcher
from django_tasks_shared.client.options import ConfigError, build_config
from django_tasks_shared.protocol.paths import UnsafePath, open_log, runtime_dir
from helpers import SECRET_KEY, tasks_settings, temp_dir
from testproject import tasks

NOBODY = 65534


@pytest.fixture
def base(monkeypatch):
    directory = temp_dir(prefix="dts-xdg-")
    monkeypatch.setenv("XDG_RUNTIME_DIR", directory)
    return directory


def ours(base):
    return os.path.join(base, f"django-tasks-shared-{os.getuid()}")


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def embedded_config():
    return build_config("default", {"WORKERS": 1}, kind="process", queues=("default",),
                        secret_key=SECRET_KEY, settings_module="testproject.settings")


@pytest.mark.timeout(10)
def test_made_0700_whatever_the_umask_and_reused(base):
    old = os.umask(0o277)  # would give 0500
    try:
        path = runtime_dir()
    finally:
        os.umask(old)
    assert path == ours(base) and mode_of(path) == 0o700
    assert runtime_dir() == path  # ours, 0700: used as it is


@pytest.mark.timeout(10)
def test_a_directory_of_another_user_is_refused_and_left_alone(base):
    if os.getuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")
    path = ours(base)
    os.mkdir(path, 0o777)
    os.chmod(path, 0o777)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(UnsafePath) as caught:
        runtime_dir()
    text = str(caught.value)
    assert path in text and "uid 65534" in text and "not by this user" in text
    assert "Remove it" in text and "XDG_RUNTIME_DIR" in text
    assert mode_of(path) == 0o777 and os.lstat(path).st_uid == NOBODY  # never chmod'ed
    # at the right moment: the backend's configuration, as InvalidTaskBackend
    with pytest.raises(ConfigError, match="owned by"):
        embedded_config()
    with tasks_settings(None, {"WORKERS": 1}), pytest.raises(InvalidTaskBackend) as invalid:
        tasks.add.enqueue(1, 2)
    assert path in str(invalid.value) and "OPTIONS['ADDRESS']" in str(invalid.value)


@pytest.mark.timeout(10)
def test_a_symlink_is_refused_and_its_target_untouched(base):
    target = temp_dir(prefix="dts-target-")
    os.chmod(target, 0o755)
    os.symlink(target, ours(base))
    with pytest.raises(UnsafePath) as caught:
        runtime_dir()
    assert "symbolic link" in str(caught.value) and target in str(caught.value)
    assert mode_of(target) == 0o755


@pytest.mark.timeout(10)
def test_a_loose_mode_is_refused_not_fixed(base):
    path = ours(base)
    os.mkdir(path)
    os.chmod(path, 0o755)
    with pytest.raises(UnsafePath) as caught:
        runtime_dir()
    assert "mode 0755" in str(caught.value) and f"chmod 700 {path}" in str(caught.value)
    assert mode_of(path) == 0o755


@pytest.mark.timeout(10)
def test_a_file_in_its_place_is_refused(base):
    with open(ours(base), "w"):
        pass
    with pytest.raises(UnsafePath, match="is not a directory"):
        runtime_dir()


@pytest.mark.timeout(30)
def test_the_autostart_log_is_never_opened_through_a_symlink():
    directory = temp_dir()
    victim = os.path.join(directory, "victim")
    with open(victim, "w") as f:
        f.write("precious\n")
    address = os.path.join(directory, "tasks.sock")
    os.symlink(victim, address + ".log")
    with pytest.raises(UnsafePath, match="symbolic link"):
        open_log(address + ".log")
    # AUTOSTART refuses to start a server that would write there
    config = build_config("default", {"WORKERS": 1, "ADDRESS": address, "AUTOSTART": True},
                          kind="process", queues=("default",), secret_key=SECRET_KEY,
                          settings_module="testproject.settings")
    with pytest.raises(UnsafePath) as caught:
        launcher.ensure_server(config, timeout=5)
    assert "symbolic link" in str(caught.value) and address + ".log" in str(caught.value)
    with open(victim) as f:
        assert f.read() == "precious\n"
    assert not os.path.exists(address)  # no server was started
    # a regular log file is opened for appending, 0600 when made
    log = open_log(os.path.join(directory, "real.log"))
    log.close()
    assert mode_of(os.path.join(directory, "real.log")) == 0o600
