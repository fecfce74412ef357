"""What a stopped worker leaves behind: its task's child processes that outlive the SIGTERM.

    Supervisor.stop_worker (TIME_LIMIT, cancel): SIGTERM to the worker's process group,
        SIGKILL deadline = now + KILL_GRACE; memwatch (MAX_TASK_MEMORY): SIGKILL at once
    the worker dies of it (Python's default SIGTERM action) long before the deadline, and is
    reaped -> adopt(worker pid, deadline): the processes still in its SESSION (the worker is a
    session leader, start_new_session) -- a child that ignores SIGTERM, or that moved to a
    process group of its own -- are remembered (psutil.Process: pid AND create time)
    kill_due(now), from every supervisor pass: at the deadline, SIGKILL to each of them and to
    any other process of the session by then (children they started during the grace)

Only `setsid` (a new session: what a daemon's double fork does) escapes: docs/memory.md says
when a cgroup (systemd's KillMode=control-group, a container) is the better tool.

PID reuse: a remembered process is signalled through psutil, which checks its create time.
The session is rescanned only while one of them still lives: a session id stays in use (no new
process can get that pid) as long as any process belongs to the session.
"""

import logging
import os
import signal
import time
from dataclasses import dataclass

import psutil

logger = logging.getLogger("django_tasks_shared.supervisor")


def session_members(sid):
    """psutil.Process of every live process in session `sid` (one walk of the pid list, ~1 ms
    with 124 processes here: done only for a worker that was being stopped)."""
    members = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == sid:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:  # dead, its reaper not there yet
                    members.append(proc)
        except (OSError, psutil.Error):
            continue  # gone meanwhile
    return members


@dataclass
class Leftover:
    worker_id: str
    sid: int                      # the worker's pid: its session (and process group) id
    deadline: float               # monotonic: SIGKILL then
    members: list                 # psutil.Process, remembered when the worker was reaped


class Leftovers:
    def __init__(self, scan=session_members):
        self.pending: list[Leftover] = []
        self.scan = scan
        self.killed = 0           # processes SIGKILLed so far (health, tests)

    def adopt(self, worker_id, sid, deadline, now=None):
        """The stopped worker `sid` was reaped: remember what is left of its session, to be
        SIGKILLed at `deadline` (at once when it passed)."""
        members = [p for p in self.scan(sid) if p.pid != os.getpid()]
        if not members:
            return
        logger.warning("worker %s (pid %d) exited but left %d process(es) of its session "
                       "running (pids %s): SIGKILL %s", worker_id, sid, len(members),
                       ", ".join(str(p.pid) for p in members),
                       "now" if deadline <= (now or time.monotonic()) else "after the grace")
        self.pending.append(Leftover(worker_id, sid, deadline, members))
        self.kill_due(now)

    def kill_due(self, now=None):
        now = time.monotonic() if now is None else now
        due = [left for left in self.pending if left.deadline <= now]
        if not due:
            return
        self.pending = [left for left in self.pending if left.deadline > now]
        for left in due:
            self._kill(left)

    def _kill(self, left):
        alive = [p for p in left.members if _running(p)]
        if not alive:
            return  # all gone in the grace: nothing to do, and the session id may be free
        # The session still exists (a member lives), so its id cannot belong to anyone else:
        # rescanning it finds the children the survivors started during the grace too.
        targets = {p.pid: p for p in alive}
        for p in self.scan(left.sid):
            targets.setdefault(p.pid, p)
        for proc in targets.values():
            try:
                proc.send_signal(signal.SIGKILL)  # psutil checks the create time first
                self.killed += 1
            except psutil.Error:
                pass
        logger.warning("SIGKILLed %d process(es) left by worker %s (pid %d) after the "
                       "SIGTERM grace: %s", len(targets), left.worker_id, left.sid,
                       ", ".join(str(pid) for pid in targets))


def _running(proc):
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
