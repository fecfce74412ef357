"""Where an embedded server's socket and the side files of any server live, and the sys.path a
launched server or worker gets (so that it imports what its launcher imports)."""

import os
import sys
import tempfile


def runtime_dir():
    """A private (0700) per-user directory for embedded sockets and lock files."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = os.path.join(base, f"django-tasks-shared-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def side_file(address, suffix):
    """<socket>.lock / .start.lock / .log beside a unix socket; in runtime_dir() for TCP."""
    if isinstance(address, str):
        return address + suffix
    return os.path.join(runtime_dir(), "tcp-%s-%d%s" % (*address, suffix))


def python_path():
    """sys.path of this process as absolute entries, so workers import what we import."""
    return os.pathsep.join(os.path.abspath(p or ".") for p in sys.path if p is not None)
