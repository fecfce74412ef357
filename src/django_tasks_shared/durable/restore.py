"""Replaying a STATE_DIR: the newest snapshot, then each journal after it, one operation at a
time (the operations: format.py), into plain dicts that TaskStore.restore() takes over.

Every operation sets absolute values, so the replay gives the same state whether a snapshot
already held an operation's effect or not (snapshots are written while clients keep changing
the state: statedir.py).
"""

from ..protocol.status import FINISHED
from .format import StateError


class Restored:
    """The state rebuilt from disk: apply() each operation in order (see format.py)."""

    def __init__(self):
        self.records = {}   # id -> record; finished ones in LRU order (last touched last)
        self.durable = {}
        self.counters = {}
        self.server = None  # the "h" facts of the last journal replayed: who wrote it
        self.snapshot_at = None
        self.torn = []

    def apply(self, op):
        kind = op[0]
        records = self.records
        if kind == "s":
            record = records.get(op[1])
            if record is not None:
                record.update(op[2])
                if record["status"] in FINISHED:  # a finish (or a read) moves it to the end
                    records[op[1]] = records.pop(op[1])
        elif kind == "p":
            records.pop(op[1]["id"], None)
            records[op[1]["id"]] = op[1]
        elif kind == "P":  # a snapshot's chunk: ids unique within the file
            records.update(op[1])
        elif kind == "f":
            records.pop(op[1], None)
        elif kind == "d":
            if len(op) > 2:
                self.durable[op[1]] = op[2]
            else:
                self.durable.pop(op[1], None)
        elif kind == "c":
            self.counters = op[1]
        elif kind == "h":
            self.server = op[1]
        elif kind == "m":
            self.counters = op[1]["counters"]
            self.durable = dict(op[1]["durable"])
            self.snapshot_at = op[1]["written_at"]
        elif kind == "e":
            pass
        else:
            raise StateError(f"unknown operation {kind!r}")
