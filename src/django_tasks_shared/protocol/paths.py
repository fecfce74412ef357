"""Where an embedded server's socket and the side files of any server live, and how a server or
worker process is started: a fresh interpreter with its launcher's sys.path (so that it imports
what its launcher imports) and its spec as JSON on stdin (never on a command line or in the
environment: the spec holds the authkey).
"""

import json
import os
import stat
import subprocess
import sys
import tempfile


class UnsafePath(RuntimeError):
    """A directory or file this package would put its sockets, side files or log in cannot be
    trusted (or used at all): the message names the path, what is wrong and the fix."""


def _owner(uid):
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def runtime_dir():
    """The private per-user directory for embedded sockets and side files:
    $XDG_RUNTIME_DIR (or the temporary directory)/django-tasks-shared-<uid>, created 0700.

    An existing one is checked with lstat and used only if it is a real directory (not a
    symlink), owned by this user, mode 0700: in a world-writable /tmp another user could have
    made it first, and could then remove or replace the sockets in it. It is never chmod'ed
    (UnsafePath says what to do instead)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = os.path.join(base, f"django-tasks-shared-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafePath(
            f"cannot create the runtime directory {path} for the embedded server's socket "
            f"({exc.strerror}); set XDG_RUNTIME_DIR (or TMPDIR) to a writable private "
            f"directory, or set OPTIONS['ADDRESS'].") from None
    else:
        os.chmod(path, 0o700)  # ours, made this instant: the umask may have narrowed it
        return path
    check_private_dir(path, "the runtime directory")
    return path


def check_private_dir(path, what):
    """UnsafePath unless `path` is a real directory owned by us with mode 0700."""
    info = os.lstat(path)
    fix = ("Remove it (as its owner, or root) so that it is made afresh, or set "
           "XDG_RUNTIME_DIR (or TMPDIR) to a private directory of this user; it is never "
           "chmod'ed or taken over.")
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePath(f"{what} {path} is a symbolic link (to {os.readlink(path)!r}), "
                              f"not a directory: refusing to follow it. {fix}")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"{what} {path} is not a directory. {fix}")
    if info.st_uid != os.getuid():
        raise UnsafePath(
            f"{what} {path} is owned by {_owner(info.st_uid)}, not by this user "
            f"({_owner(os.getuid())}): another user may have created it to take over the "
            f"sockets in it. {fix}")
    mode = stat.S_IMODE(info.st_mode)
    if mode != 0o700:
        raise UnsafePath(
            f"{what} {path} has mode {mode:04o}, not 0700: other users could remove or replace "
            f"the sockets in it. If you trust what is in it, `chmod 700 {path}`; else remove "
            f"it. It is never chmod'ed by this package.")


def open_log(path):
    """A server log opened for appending (0600 if created), never through a symlink: in a
    shared directory, a planted link would make the server write into another file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW |
                     os.O_CLOEXEC, 0o600)
    except OSError:
        if os.path.islink(path):
            raise UnsafePath(f"the server log {path} is a symbolic link (to "
                                  f"{os.readlink(path)!r}): refusing to follow it. Remove "
                                  f"it.") from None
        raise
    return os.fdopen(fd, "ab")


def file_in_the_way(path):
    """The first existing ancestor directory of `path` that is in fact not a directory (a
    regular file: ADDRESS="/etc/passwd/tasks.sock"), or None."""
    parent = os.path.dirname(path)
    while parent and not os.path.lexists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            return None
        parent = up
    return parent if parent and not os.path.isdir(parent) else None


def make_socket_dir(address):
    """Create the directory of a unix socket path (0700 when made here), or UnsafePath saying
    why it cannot be (a file in the way, no permission)."""
    directory = os.path.dirname(address)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        blocker = file_in_the_way(address)
        if blocker is not None:
            raise UnsafePath(
                f"the socket path {address} (OPTIONS['ADDRESS']) cannot be made: {blocker} is "
                f"a file, not a directory. Choose a path in a directory, e.g. "
                f"/run/<project>/tasks.sock.") from None
        raise UnsafePath(
            f"cannot create the directory {directory} for the socket {address} "
            f"(OPTIONS['ADDRESS']): {exc.strerror}. Create it, writable by the user who runs "
            f"the task server, or choose another path.") from None


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
