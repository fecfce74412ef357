"""The start tables a previous server's workers left in STATE_DIR/starts (prefetch).

    StateDir.open -> PreviousStarts(STATE_DIR) -> TaskStore.restore(..., started=.started):
        a task reserved when that server stopped (its record READY with "reserved":
        [worker, thread, rseq]) -> started(worker, thread, rseq) read from that worker's table:
            its start time      it started: it ends WorkerLost like a RUNNING task
            None                it never started: READY in the queue again, nothing lost
            UNKNOWN             no table, or unreadable: as started (never run twice)
    after the restore's decisions are journaled and committed -> remove(): the files go

A table is read under its lock (a worker of the dead server still inside it finishes first:
it writes a start only while its parent, that server, is alive, see protocol/starts.py), so a
start is either in the table or will never happen.
"""

import logging
import os

from ..protocol.starts import STARTS_DIR, UNKNOWN, StartTable

logger = logging.getLogger("django_tasks_shared.state")
PATIENCE = 2.0  # seconds to wait for a table's lock (a SIGSTOPped old worker: UNKNOWN)


class PreviousStarts:
    def __init__(self, state_path):
        self.folder = os.path.join(state_path, STARTS_DIR)
        try:
            self.names = sorted(os.listdir(self.folder))
        except FileNotFoundError:
            self.names = []
        self._tables: dict = {}

    def started(self, worker_id, thread, rseq):
        table = self._table(worker_id)
        if table is None:
            return UNKNOWN
        got = table.entries([(thread, rseq)], patience=PATIENCE)
        if not isinstance(got, dict):
            return UNKNOWN
        entry = got.get((thread, rseq))
        # started, or finished with its outcome held for a claim that never reached the server:
        # either way it ran, and ends WorkerLost like a task RUNNING at the crash
        return None if entry is None else (entry[1] or UNKNOWN)

    def _table(self, worker_id):
        if worker_id not in self._tables:
            table = None
            if os.sep not in worker_id and worker_id in self.names:
                try:
                    table = StartTable.open(os.path.join(self.folder, worker_id))
                except (OSError, ValueError) as exc:
                    logger.warning("start table of worker %s unreadable (%s): its reserved "
                                   "tasks count as started", worker_id, exc)
            self._tables[worker_id] = table
        return self._tables[worker_id]

    def remove(self):
        """The previous server's tables, once what they told is journaled."""
        for table in self._tables.values():
            if table is not None:
                table.close()
        for name in self.names:
            try:
                os.unlink(os.path.join(self.folder, name))
            except OSError:
                pass
