"""Tasks of the prefetch tests (tests/test_prefetch.py): each leaves "start" and "end" lines
in a ledger file, so a test sees what ran, when, and how many times."""

import os
import time

from django.tasks import task


def _line(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{text}\n".encode())
    finally:
        os.close(fd)


@task
def mark(path, tag, seconds=0.0):
    """'start <tag> <pid> <time>' now, 'end <tag>' after `seconds`."""
    _line(path, f"start {tag} {os.getpid()} {time.time():.6f}")
    time.sleep(seconds)
    _line(path, f"end {tag}")
    return tag


def ledger(path):
    """{tag: [("start", pid, time) | ("end",), ...]} of the ledger at `path`."""
    out: dict = {}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            kind, tag, *rest = line.split()
            out.setdefault(tag, []).append(
                (kind, int(rest[0]), float(rest[1])) if kind == "start" else (kind,))
    return out


def starts(path, tag):
    return [e for e in ledger(path).get(tag, []) if e[0] == "start"]
