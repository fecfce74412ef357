"""The on-disk format of a STATE_DIR: file headers, framed entries, and their decoding.

Every file (journal or snapshot) starts with a 16-byte header (MAGIC, format version, kind),
then framed entries: 4-byte big-endian length, 4-byte CRC-32 of the payload, the payload (one
list, pickled with protocol 5: records are JSON-compatible, but pickle reads ~4x faster than
json on this kind of machine, which decides how fast a server with 200,000 records starts).
The directory is 0700 and only the server's user can write it: the same trust as the code.
An entry is an *operation*:

    ["p", record]           a record stored whole (enqueue, or replaced)
    ["P", {id: record}]     records stored whole, in bulk (snapshots, 256 a chunk)
    ["s", id, {fields}]     fields of a record set (start, finish, fail...)
    ["f", id]               a record forgotten (evicted, expired)
    ["d", key, value]       store.durable[key] = value (["d", key] deletes it)
    ["c", {counters}]       the counters as they stand (written at most once a second)
    ["h", {facts}]          hello: first entry of a journal (server pid, time, generation)
    ["m", {meta}]           first entry of a snapshot: counters, durable state, written_at,
                            and "final" when it was written at a clean stop
    ["e", n]                last entry of a snapshot: it holds n "P" chunks (complete)

Every operation sets absolute values, so applying one twice, or to a record already in a later
state, gives the same result: that is what lets a snapshot be written while clients keep
changing the state (see statedir.py; replay: restore.py).
"""

import os
import pickle
import struct
import zlib

MAGIC = b"DTSHARED"
FORMAT_VERSION = 1
KIND_JOURNAL, KIND_SNAPSHOT = 1, 2
HEADER = struct.Struct("!8sHH4x")
FRAME = struct.Struct("!II")


class StateError(RuntimeError):
    """A state file is damaged or from a newer format: the server refuses to start."""


class StateDirInUse(RuntimeError):
    """Another task server holds the STATE_DIR's locks."""


def frame(op):
    payload = pickle.dumps(op, 5)
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def header(kind):
    return HEADER.pack(MAGIC, FORMAT_VERSION, kind)


def read_entries(path, kind):
    """Decode a whole file: (list of operations, torn) where `torn` is None or a description
    of a torn tail that was dropped (only a journal can have one: the crash came mid-write).

    Raises StateError naming the file and the byte offset for anything else: a wrong magic or
    kind, a newer format version, a checksum mismatch followed by more data, an undecodable entry.
    """
    with open(path, "rb") as f:
        return decode_entries(f.read(), kind, path)


def decode_entries(data, kind, path="<bytes>"):
    """read_entries() of bytes already in memory; `path` only names them in errors."""
    size = len(data)
    if size < HEADER.size:
        if kind == KIND_JOURNAL and MAGIC.startswith(data[:8]):
            return [], f"{path}: header cut short at {size} bytes (created just before a crash)"
        raise StateError(f"{path}: too short for a header ({size} bytes)")
    magic, version, file_kind = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise StateError(f"{path}: not a django-tasks-shared state file (bad magic at offset 0)")
    if version > FORMAT_VERSION:
        raise StateError(
            f"{path}: written by a newer django-tasks-shared (state format {version}, this one "
            f"reads up to {FORMAT_VERSION}); upgrade this installation, or move the state aside "
            f"with `manage.py tasks_server --discard-state`")
    if file_kind != kind:
        raise StateError(f"{path}: holds kind {file_kind}, expected {kind} (offset 4)")
    ops: list = []
    offset = HEADER.size
    loads = pickle.loads
    view = memoryview(data)
    while offset < size:
        if size - offset < FRAME.size:
            return ops, _torn(path, kind, offset, size, "a frame header cut short")
        length, crc = FRAME.unpack_from(data, offset)
        end = offset + FRAME.size + length
        if end > size:
            if not any(data[offset:]):  # zeros: the file grew but its data never reached disk
                return ops, _torn(path, kind, offset, size, "zero-filled tail")
            return ops, _torn(path, kind, offset, size, f"an entry of {length} bytes cut short")
        payload = view[offset + FRAME.size:end]
        if zlib.crc32(payload) != crc:
            if end == size or not any(data[offset:]):
                return ops, _torn(path, kind, offset, size, "a bad checksum in the last entry")
            raise StateError(f"{path}: checksum mismatch in the entry at offset {offset} "
                             f"(of {size} bytes); the file is damaged")
        try:
            ops.append(loads(payload))
        except Exception as exc:  # a checksum collision on garbage: as damaged as it gets
            raise StateError(f"{path}: undecodable entry at offset {offset}: {exc}") from None
        offset = end
    return ops, None


def _torn(path, kind, offset, size, what):
    if kind != KIND_JOURNAL:
        raise StateError(f"{path}: {what} at offset {offset} (of {size} bytes); a snapshot is "
                         f"only ever renamed into place complete, so the file is damaged")
    return f"{path}: dropped {size - offset} byte(s) at offset {offset}: {what}"


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
