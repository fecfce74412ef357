"""Requests of authenticated connections, and the long-polls parked while they wait.

    frame ─unpickle─> (ident, method, args, kwds)
      ident None:      the manager's public calls (create, incref, decref, dummy,
                       accept_connection, get_methods): a stock proxy works too
      "wait":          polls.watch(id, watcher) ─finished─> reply now
                                                └─else──> Parked (timer heap) ─┐
      "finish_and_claim", "report_and_claim" (with a claim token), "claim_batch":  │
                        polls.claim_now(...) ─record / STOP─> reply now         │
                                             └─NOTHING──> Parked + claimers ───┤
      any other:       the store's method ─> ("#RETURN", value) | ("#ERROR", exc) │
    watcher.set() (task finished) / on_work (task ready, workers to stop) ─────┴─> unpark:
      reply, then the frames that came behind it on the same connection

The event loop (eventloop.py) owns the connections; this class reaches it only through the
`LoopPort` below. A connection sends one request at a time (client/connection.py); frames that
come while it is parked wait in `peer.held`, so replies are never reordered.
"""

import heapq
import itertools
import logging
import os
import pickle
import time
from collections import deque
from typing import Protocol

from ..protocol.methods import STORE_IDENT
from ..store.longpoll import NOTHING

logger = logging.getLogger("django_tasks_shared.server")


class LoopPort(Protocol):
    """What the dispatcher needs of the event loop."""

    def send(self, peer, msg, first=False):
        """Queue a reply, written at the end of the turn (after the journal commit)."""

    def close(self, peer):
        """Drop the connection."""

    def set_hot(self, peer, hot):
        """Serve the peer every turn (hot) or within the cold budget."""

    def wake(self):
        """Make the loop's next turn come now (safe from any thread)."""


class Parked:
    """A long-poll waiting in the loop: a claim (`worker`) or a wait (`task`)."""

    __slots__ = ("peer", "worker", "task", "deadline", "done", "watcher", "token", "want")

    def __init__(self, peer, worker, task, deadline, token=None, want=None):
        self.peer, self.worker, self.task, self.deadline = peer, worker, task, deadline
        self.token = token  # a claim's (thread, seq), from report_and_claim
        self.want = want    # a batch claim's size (prefetch), None for one task
        self.done = False
        self.watcher = None  # a wait's _Watcher, registered with the store


class _Watcher:
    """What the store calls (any thread, store lock held) when a watched task finishes."""

    __slots__ = ("dispatcher", "parked")

    def __init__(self, dispatcher, parked):
        self.dispatcher, self.parked = dispatcher, parked

    def set(self):
        self.dispatcher.woken.append(self.parked)
        self.dispatcher.loop.wake()


class Dispatcher:
    def __init__(self, loop: LoopPort, calls, polls, get, exposed):
        self.loop = loop
        self.calls = calls              # wire name -> the store's method (TaskStore.calls())
        self.polls = polls              # the store's LongPolls: claims and waits
        self.get = get                  # TaskStore.get: what an expired wait answers
        self.exposed = tuple(exposed)
        self.timers: list[tuple[float, int, Parked]] = []  # heap of (deadline, seq, Parked)
        self._seq = itertools.count()
        self.claimers: deque[Parked] = deque()  # parked claims, first parked first served
        self.woken: deque[Parked] = deque()  # parked waits whose task finished (any thread)
        self.work = False               # retry parked claims (a task ready, a worker to stop)
        polls.on_work = self._on_work

    def _on_work(self):  # any thread
        self.work = True
        self.loop.wake()

    # ---- a request ---------------------------------------------------------------------------

    def request(self, peer, data):
        try:
            ident, method, args, kwds = pickle.loads(data)
        except Exception as exc:
            logger.warning("dropped a client connection: unreadable request (%s)", exc)
            self.loop.close(peer)
            return
        if ident is None:
            msg = self._public(method, args, kwds)
        else:
            peer.active = True
            if not peer.hot:
                self.loop.set_hot(peer, True)  # a client at work: served every turn
            if method == "finish_and_claim":
                return self._claim(peer, *args, **kwds)
            if method == "report_and_claim":
                return self._claim_with_token(peer, *args, **kwds)
            if method == "claim_batch":
                return self._claim_batch(peer, *args, **kwds)
            if method == "wait":
                return self._wait(peer, *args, **kwds)
            function = self.calls.get(method)
            if function is None:
                msg = self._fallback(method, ident)
            else:
                try:
                    msg = ("#RETURN", function(*args, **kwds))
                except Exception as exc:
                    msg = ("#ERROR", exc)
        self.loop.send(peer, msg)

    def _public(self, method, args, kwds):
        """The manager's own calls: what a stock `BaseManager.connect()` and proxy use."""
        if method in ("accept_connection", "dummy", "incref", "decref"):
            return ("#RETURN", None)  # one pinned object: nothing to count or free
        if method == "create" and args and args[0] == STORE_IDENT:
            return ("#RETURN", (STORE_IDENT, self.exposed))
        if method == "get_methods":
            return ("#RETURN", self.exposed)
        return ("#TRACEBACK", f"the task server does not serve {method!r} (only the pinned "
                              f"{STORE_IDENT!r} object, its methods {', '.join(self.exposed)})")

    def _fallback(self, method, ident):
        if method in ("__str__", "__repr__"):
            return ("#RETURN", f"<TaskStore of the task server, pid {os.getpid()}>")
        return ("#ERROR", AttributeError(
            f"method {method!r} of the task store is not exposed (ident {ident!r})"))

    def _claim(self, peer, worker_id, outcome, timeout, token=None, want=None):
        try:
            got = self.polls.claim_now(worker_id, outcome, token, want)
        except Exception as exc:  # StorageUnavailable: the outcome was not applied
            self.loop.send(peer, ("#ERROR", exc))
            return
        if got is NOTHING:
            parked = self._park(peer, Parked(peer, worker_id, None, time.monotonic() + timeout,
                                             token, want))
            self.claimers.append(parked)
            return
        self.loop.send(peer, ("#RETURN", got))

    def _claim_with_token(self, peer, worker_id, outcome, timeout, thread, seq):
        self._claim(peer, worker_id, outcome, timeout, (thread, seq))

    def _claim_batch(self, peer, worker_id, outcomes, timeout, thread, seq, want):
        self._claim(peer, worker_id, list(outcomes), timeout, (thread, seq), want)

    def _wait(self, peer, task_id, timeout):
        parked = Parked(peer, None, task_id, time.monotonic() + timeout)
        watcher = _Watcher(self, parked)
        done, record = self.polls.watch(task_id, watcher)
        if done:
            self.loop.send(peer, ("#RETURN", record))
            return
        parked.watcher = watcher
        self._park(peer, parked)

    def _park(self, peer, parked):
        peer.parked = parked
        heapq.heappush(self.timers, (parked.deadline, next(self._seq), parked))
        return parked

    # ---- the loop's turn ----------------------------------------------------------------------

    def has_work(self):
        """Something to do without waiting for an event."""
        return bool(self.woken) or self.work

    def deadline(self):
        """(monotonic deadline of the first parked request or None, wall-clock time the first
        deferred task becomes due when claims are parked, or None): the loop sleeps no longer."""
        first = self.timers[0][0] if self.timers else None
        due = self.polls.next_due() if self.claimers else None
        return first, due

    def run(self):
        """Serve what is due in this turn: claims (a task ready, or a deferred one due), waits
        whose task finished, parked requests past their deadline. Returns the time read."""
        if self.claimers and not self.work:
            due = self.polls.next_due()
            self.work = due is not None and due <= time.time()
        if self.work:
            self.work = False
            self._serve_claimers()
        while self.woken:
            parked = self.woken.popleft()
            if not parked.done:
                self._unpark(parked, self.get(parked.task))
        now = time.monotonic()
        timers = self.timers
        while timers and timers[0][0] <= now:
            parked = heapq.heappop(timers)[2]
            if not parked.done:
                self._expire(parked)
        return now

    def closed(self, peer):
        """The peer's connection closed: forget what it waited for."""
        parked = peer.parked
        if parked is not None:
            parked.done = True
            if parked.watcher is not None:
                self.polls.unwatch(parked.task, parked.watcher)

    def _serve_claimers(self):
        claimers = [p for p in self.claimers if not p.done]
        if not claimers:
            self.claimers.clear()
            return
        results = self.polls.claim_for([(p.worker, p.token, p.want) for p in claimers])
        self.claimers = deque()
        for parked, got in zip(claimers, results, strict=True):
            if got is NOTHING:
                self.claimers.append(parked)
            else:
                self._unpark(parked, got)

    def _expire(self, parked):
        if parked.worker is not None:  # a claim: one last look, else "nothing yet"
            got = self.polls.claim_for([(parked.worker, parked.token, parked.want)])[0]
            self._unpark(parked, None if got is NOTHING else got)
        else:
            self.polls.unwatch(parked.task, parked.watcher)
            self._unpark(parked, self.get(parked.task))

    def _unpark(self, parked, value):
        parked.done = True
        peer = parked.peer
        if peer.closed:
            return  # a claimed task whose worker vanished ends WorkerLost (supervisor)
        peer.parked = None
        # a task handed out goes first in the turn: its worker is on the task's critical path
        self.loop.send(peer, ("#RETURN", value),
                       first=parked.worker is not None and value is not None)
        held, peer.held = peer.held, []
        for data in held:
            if peer.parked is not None:
                peer.held.append(data)
            else:
                self.request(peer, data)
