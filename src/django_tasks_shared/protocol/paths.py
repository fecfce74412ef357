"""Where an embedded server's socket and the side files of any server live, and how a server or
worker process is started: a fresh interpreter with its launcher's sys.path (so that it imports
what its launcher imports) and its spec as JSON on stdin (never on a command line or in the
environment: the spec holds the authkey).
"""

import json
import os
import subprocess
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


def start_python(command, *, env=None, out=None):
    """`python -c command` in a session of its own (Ctrl-C in a terminal reaches its starter
    only), with this process's sys.path; its stdin is a pipe for send_spec()."""
    return subprocess.Popen(
        [sys.executable, "-c", command], stdin=subprocess.PIPE, stdout=out, stderr=out,
        env=dict(os.environ, PYTHONPATH=python_path(), **(env or {})),
        start_new_session=True, close_fds=True)


def send_spec(popen, spec):
    """Hand the started process its spec (one JSON line) and close its stdin. False when it
    died at once (its starter finds out when it reaps it)."""
    stdin = popen.stdin
    if stdin is None:
        return False
    try:
        stdin.write(json.dumps(spec).encode() + b"\n")
        stdin.close()
    except OSError:
        return False
    return True
