"""Tasks of the durability tests: each execution leaves one line in a ledger file."""

import os
import time

from django.tasks import task


@task
def record(path, tag, seconds=0.0):
    """Sleep `seconds`, then append `tag` to the ledger at `path` (one line per execution,
    O_APPEND, so lines of concurrent workers never mix)."""
    time.sleep(seconds)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{tag}\n".encode())
    finally:
        os.close(fd)
    return tag


@task
def big_return(nbytes):
    return "x" * nbytes
