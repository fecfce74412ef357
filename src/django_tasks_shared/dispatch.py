"""Requests of authenticated connections, for the event loop (a mixin of EventLoop).

    frame ─unpickle─> (ident, method, args, kwds)
      ident None:      the manager's public calls (create, incref, decref, dummy,
                       accept_connection, get_methods): a stock proxy works too
      "wait":          store.watch(id, watcher) ─finished─> reply now
                                                └─else──> Parked (timer heap) ─┐
      "finish_and_claim": store.claim_now(...) ─record / STOP─> reply now      │
                                               └─NOTHING──> Parked + claimers ─┤
      any other:       TaskStore method ─> ("#RETURN", value) | ("#ERROR", exc) │
    watcher.set() (task finished) / on_work (task ready, workers to stop) ─────┴─> _unpark:
      reply, then the frames that came behind it on the same connection

A connection sends one request at a time (client.py); frames that come while it is parked wait
in `peer.held`, so replies are never reordered.
"""

import heapq
import logging
import os
import pickle
import time
from collections import deque

from .client import STORE_IDENT
from .store_longpoll import NOTHING

logger = logging.getLogger("django_tasks_shared.server")


class Parked:
    """A long-poll waiting in the loop: a claim (`worker`) or a wait (`task`)."""

    __slots__ = ("peer", "worker", "task", "deadline", "done", "watcher")

    def __init__(self, peer, worker, task, deadline):
        self.peer, self.worker, self.task, self.deadline = peer, worker, task, deadline
        self.done = False
        self.watcher = None  # a wait's _Watcher, registered with the store


class _Watcher:
    """What the store calls (any thread, store lock held) when a watched task finishes."""

    __slots__ = ("loop", "parked")

    def __init__(self, loop, parked):
        self.loop, self.parked = loop, parked

    def set(self):
        self.loop._woken.append(self.parked)
        self.loop.wake()


class Dispatcher:
    """Needs of the loop: store, calls, exposed, _timers, _seq, _claimers, _dirty, _close,
    _set_hot."""

    def _send(self, peer, msg, first=False):
        """Queue a reply: written at the end of the turn, after the journal commit."""
        peer.queue(msg)
        if first:
            self._dirty.insert(0, peer)
        else:
            self._dirty.append(peer)

    def _request(self, peer, data):
        try:
            ident, method, args, kwds = pickle.loads(data)
        except Exception as exc:
            logger.warning("dropped a client connection: unreadable request (%s)", exc)
            self._close(peer)
            return
        if ident is None:
            msg = self._public(method, args, kwds)
        else:
            peer.active = True
            if not peer.hot:
                self._set_hot(peer, True)  # a client at work: served every turn while it works
            if method == "finish_and_claim":
                return self._claim(peer, *args, **kwds)
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
        self._send(peer, msg)

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

    def _claim(self, peer, worker_id, outcome, timeout):
        got = self.store.claim_now(worker_id, outcome)
        if got is NOTHING:
            parked = self._park(peer, Parked(peer, worker_id, None, time.monotonic() + timeout))
            self._claimers.append(parked)
            return
        self._send(peer, ("#RETURN", got))

    def _wait(self, peer, task_id, timeout):
        parked = Parked(peer, None, task_id, time.monotonic() + timeout)
        watcher = _Watcher(self, parked)
        done, record = self.store.watch(task_id, watcher)
        if done:
            self._send(peer, ("#RETURN", record))
            return
        parked.watcher = watcher
        self._park(peer, parked)

    def _park(self, peer, parked):
        peer.parked = parked
        heapq.heappush(self._timers, (parked.deadline, next(self._seq), parked))
        return parked

    def _serve_claimers(self):
        claimers = [p for p in self._claimers if not p.done]
        if not claimers:
            self._claimers.clear()
            return
        results = self.store.claim_for([p.worker for p in claimers])
        self._claimers = deque()
        for parked, got in zip(claimers, results, strict=True):
            if got is NOTHING:
                self._claimers.append(parked)
            else:
                self._unpark(parked, got)

    def _expire(self, parked):
        if parked.worker is not None:  # a claim: one last look, else "nothing yet"
            got = self.store.claim_for([parked.worker])[0]
            self._unpark(parked, None if got is NOTHING else got)
        else:
            self.store.unwatch(parked.task, parked.watcher)
            self._unpark(parked, self.store.get(parked.task))

    def _unpark(self, parked, value):
        parked.done = True
        peer = parked.peer
        if peer.closed:
            return  # a claimed task whose worker vanished ends WorkerLost (supervisor)
        peer.parked = None
        # a task handed out goes first in the turn: its worker is on the task's critical path
        self._send(peer, ("#RETURN", value), first=parked.worker is not None and value is not None)
        held, peer.held = peer.held, []
        for data in held:
            if peer.parked is not None:
                peer.held.append(data)
            else:
                self._request(peer, data)
