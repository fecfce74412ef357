"""The server's network core: ONE thread, one poller, every connection (the way Redis serves
its clients), long-polls parked as callbacks instead of holding a thread.

    listener ──accept()──> Peer: challenge sent; MAX_CONNECTIONS reached -> "#REFUSED#" + close
                           CONNECT_TIMEOUT without authenticating -> dropped
    poller (poller.py: epoll on Linux, selectors elsewhere), two sets of fds:
      hot:   the listener, the wake-up fd, every peer that made a store call lately
      cold:  new peers (handshaking, or no store call yet) and hot ones idle for 1-2 s
             (_sweep): at most COLD_PER_TURN of their events a turn, so a storm of
             connects / handshakes / closes costs the clients at work (hot: a store call
             in the last second or two) at most one short slice of a turn
    readable peer ──frames──> handshake step (peer.py) | request (dispatch.py: the Dispatcher)
        store call: TaskStore method ──> reply queued; wait / a worker's claim with nothing to
                    hand out ──> parked (timer heap, claims in FIFO order)
    another thread (supervisor, scheduler) or this one changes the store:
        task finished ──watcher.set()──> woken deque ─┐  a task ready / workers must stop
        ──polls.on_work──> claims retried ────────────┤  (Wakeup.signal() from another thread)
    end of every turn: store.commit()  (STATE_DIR: ONE journal write / fsync for every reply of
                       the turn: group commit), then the replies written
        a reply whose change is not durable yet (the journal cannot be written, or its files
        are being rewritten) is HELD, not turned into an error: the change is made and kept;
        the reply goes out once the journal is durable up to it (_hold / _release_held)

A request runs to its end before the next: store methods are O(1) or short, and pickling is
capped by MAX_PAYLOAD, so no client waits long behind another (see docs/architecture.md).
"""

import logging
import os
import socket
import threading
import time
from collections import deque

from ..protocol.methods import EXPOSED, REFUSED
from ..protocol.wire import HANDSHAKE_LIMIT, MessageTooLarge
from .dispatch import Dispatcher
from .peer import Handshake, Peer
from .poller import IN, OUT, Wakeup, make_poller

logger = logging.getLogger("django_tasks_shared.server")

READ_SIZE = 65536
ACCEPTS_PER_TURN = 32  # new connections taken per turn (then the clients already in)
IDLE_SWEEP = 1.0       # seconds: a hot peer without a request for 1-2 s goes back to cold
STOP_FLUSH = 1.0       # seconds to write the last replies when stopping


def listen(address, backlog=512):
    """The listening socket: a unix path (0600 whatever the umask) or a TCP address (IPv4:
    parse_address refuses IPv6)."""
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(address)
        finally:
            os.umask(old_umask)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    sock.listen(backlog)  # a restart of every web worker is a connect herd
    sock.setblocking(False)
    return sock


class EventLoop:
    """Implements dispatch.LoopPort (send, close, set_hot, wake) for its Dispatcher."""

    def __init__(self, store, listener, authkey, *, message_limit=None,
                 max_connections=None, handshake_timeout=5.0, portable=False):
        self.store = store
        self.listener = listener
        self.tcp = listener.family != socket.AF_UNIX
        self.authkey = bytes(authkey)
        calls = store.calls()
        self.dispatcher = Dispatcher(self, {name: calls[name] for name in EXPOSED},
                                     store.polls, store.get, EXPOSED)
        self.message_limit = message_limit if message_limit is not None else 1 << 62
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.peers = {}                 # fd -> Peer
        self._hot = set()               # peers in the hot set (see set_hot / _sweep)
        self.idle_sweep = IDLE_SWEEP
        self._next_sweep = time.monotonic() + IDLE_SWEEP
        self._poller = make_poller(portable)  # epoll on Linux, else selectors (poller.py)
        self._handshaking: deque[Peer] = deque()  # in accept order (deadlines come in order)
        self._dirty = []                # peers with replies queued in this turn
        self._journal = store.journal   # the store's Journaler: what each reply depends on
        self._needs = {}                # peer -> journal position its reply of this turn needs
        self._held = {}                 # peer -> position: replies held until it is durable
        store.journal.on_durable = self.wake
        self._wakeup = Wakeup(portable)
        self._wake_pending = False
        self._accept_paused_until = 0.0
        self._refused = 0
        self._refusal_logged = 0.0
        self._stopping = False
        self._ident = None
        self.stopped = threading.Event()
        self._poller.register(listener.fileno(), True)
        self._poller.register(self._wakeup.fd, True)

    # ---- from any thread ------------------------------------------------------------------

    def wake(self):
        if threading.get_ident() == self._ident:
            return  # the loop itself: it looks at the dispatcher's work before it sleeps again
        if not self._wake_pending:
            self._wake_pending = True
            self._wakeup.signal()

    def stop(self):
        """Stop serving: the last replies go out (up to STOP_FLUSH), every connection closes."""
        if not self._stopping:
            self._stopping = True
            self._wake_pending = True
            self._wakeup.signal()

    # ---- the loop -------------------------------------------------------------------------

    def run(self):
        self._ident = threading.get_ident()
        self._journal.owner = self._ident  # its appends are what replies wait for
        turn = self._poller.turn
        listen_fd, wake_fd = self.listener.fileno(), self._wakeup.fd
        peers, on_peer = self.peers, self._on_peer
        try:
            while not self._stopping:
                for fd, events in turn(self._timeout()):
                    peer = peers.get(fd)
                    if peer is not None:
                        on_peer(peer, events)
                    elif fd == listen_fd:
                        self._accept()
                    elif fd == wake_fd:
                        self._on_wake()
                self._after_events()
        finally:
            self._close_all()
            self.stopped.set()

    def _timeout(self):
        dispatcher = self.dispatcher
        if dispatcher.has_work():
            return 0
        first, due = dispatcher.deadline()
        if not (first or due or self._handshaking or self._accept_paused_until or self._held):
            return 1.0
        now = time.monotonic()
        timeout = 0.1 if self._held else 1.0  # (the guard wakes us too: belt and braces)
        if first is not None:
            timeout = min(timeout, first - now)
        if self._handshaking:
            timeout = min(timeout, self._handshaking[0].deadline - now)
        if due is not None:
            timeout = min(timeout, due - time.time())
        if self._accept_paused_until:
            timeout = min(timeout, self._accept_paused_until - now)
        return max(timeout, 0)

    def _after_events(self):
        now = self.dispatcher.run()
        if self._handshaking or self._accept_paused_until:
            self._deadlines(now)
        if now >= self._next_sweep:
            self._next_sweep = now + self.idle_sweep
            self._sweep()
        if self._dirty:
            self._reply()
        if self._held:
            self._release_held()

    def _sweep(self):
        """Hot peers idle since the last sweep go back to the cold epoll. A deploy that restarts
        every web process closes their (idle) connections at once: served as cold events, 32 a
        turn, that burst cannot delay the clients at work. A parked peer stays hot (its reply
        comes from the loop, and the worker or waiter behind it is at work)."""
        for peer in list(self._hot):
            if peer.active:
                peer.active = False
            elif peer.parked is None:
                self.set_hot(peer, False)

    def _deadlines(self, now):
        handshaking = self._handshaking
        while handshaking and (handshaking[0].deadline <= now or handshaking[0].closed or
                               handshaking[0].handshake is None):
            peer = handshaking.popleft()
            if not peer.closed and peer.handshake is not None:
                self.close(peer)  # CONNECT_TIMEOUT passed without authenticating
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._poller.register(self.listener.fileno(), True)

    def _reply(self):
        """Commit the journal once for every reply of this turn, then write them."""
        dirty, self._dirty = self._dirty, []
        needs, self._needs = self._needs, {}
        if not self.store.commit() or self._held:
            dirty = self._hold(dirty, needs)
        self._flush(dirty)

    def _hold(self, dirty, needs):
        """The peers of `dirty` whose reply may go out now; the others are held: their
        change is in memory and in the journal's buffer, not yet durable. Never an error:
        the change WAS made (refusing is done before a change, see store/journaler.py)."""
        durable = self._journal.durable_position()
        held = self._held
        ready = []
        for peer in dirty:
            need = needs.get(peer, 0)
            if peer in held:  # behind a held reply: same connection, same order
                held[peer] = max(held[peer], need)
            elif need > durable:
                held[peer] = need
            else:
                ready.append(peer)
        return ready

    def _release_held(self):
        durable = self._journal.durable_position()
        ready = [peer for peer, need in self._held.items() if need <= durable]
        for peer in ready:
            del self._held[peer]
        self._flush(ready)

    def _flush(self, peers):
        for peer in peers:
            if peer.closed or peer.writing:
                continue
            try:
                if peer.flush():
                    if peer.close_after_flush:
                        self.close(peer)
                    continue
            except OSError:
                self.close(peer)
                continue
            peer.writing = True  # the rest when the socket drains
            self._poller.modify(peer.fd, peer.hot, IN | OUT)

    def _on_wake(self):
        self._wakeup.drain()
        # After the read, not before: a wake() that found the flag still set skipped its write,
        # but what it announced (the dispatcher's work) was set before it, and this turn
        # handles it next.
        # Cleared before the read, a write made in between would be consumed here with the flag
        # left set, and every later wake() would skip its write.
        self._wake_pending = False

    # ---- connections ----------------------------------------------------------------------

    def send(self, peer, msg, first=False):
        """Queue a reply: written at the end of the turn, after the journal commit."""
        peer.queue(msg)
        journal = self._journal
        if journal.need:  # the request changed something: the reply waits for its entry
            need = journal.take_need()
            if need > self._needs.get(peer, 0):
                self._needs[peer] = need
        if first:
            self._dirty.insert(0, peer)
        else:
            self._dirty.append(peer)

    def set_hot(self, peer, hot):
        """Move a peer between the hot set (a store call lately: served every turn, never
        behind a storm) and the cold one (see _sweep)."""
        self._poller.unregister(peer.fd, peer.hot)
        peer.hot = hot
        if hot:
            self._hot.add(peer)
        else:
            self._hot.discard(peer)
        self._poller.register(peer.fd, hot, IN | OUT if peer.writing else IN)

    def _accept(self):
        listener = self.listener
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # EMFILE/ENFILE: pause rather than spin (level-triggered)
                logger.warning("accept() failed: %s; pausing new connections 50 ms", exc)
                self._poller.unregister(listener.fileno(), True)
                self._accept_paused_until = time.monotonic() + 0.05
                return
            if self.max_connections is not None and len(self.peers) >= self.max_connections:
                self._refuse(sock)
                continue
            sock.setblocking(False)
            if self.tcp:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            handshake = Handshake(self.authkey)
            peer = Peer(sock, handshake, time.monotonic() + self.handshake_timeout)
            self.peers[peer.fd] = peer
            self.store.meta["connections"] = len(self.peers)  # for health (one dict store)
            self._handshaking.append(peer)
            self._poller.register(peer.fd, False)
            peer.queue_raw(handshake.challenge())
            self._dirty.append(peer)

    def _refuse(self, sock):
        """Answer where the client expects the challenge, so it can say why; never block."""
        try:
            sock.setblocking(False)
            reason = (f"{REFUSED} the task server holds MAX_CONNECTIONS="
                      f"{self.max_connections} connections").encode()
            sock.send(len(reason).to_bytes(4, "big") + reason)
        except OSError:
            pass
        finally:
            sock.close()
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= 10:  # a storm must not flood the log
            logger.warning("refused %d connection(s): MAX_CONNECTIONS=%d reached",
                           self._refused, self.max_connections)
            self._refused, self._refusal_logged = 0, now

    def _on_peer(self, peer, events):
        try:
            # (a held reply is not written: never the case while writing, one request at a time)
            if events & OUT and peer not in self._held:
                if not peer.flush():
                    return
                if peer.close_after_flush:
                    self.close(peer)
                    return
                peer.writing = False
                self._poller.modify(peer.fd, peer.hot, IN)
            if events & ~OUT:  # readable, or hung up / in error: read() tells which
                self._read(peer)
        except OSError:
            self.close(peer)
        except Exception:  # a bug must cost one connection, not the server
            logger.exception("failed serving a connection; it is closed")
            self.close(peer)

    def _read(self, peer):
        try:
            data = os.read(peer.fd, max(READ_SIZE, min(peer.need - len(peer.inbuf), 1 << 22)))
        except BlockingIOError:
            return
        if not data:
            self.close(peer)  # the client went away
            return
        try:
            frames = peer.frames(data, HANDSHAKE_LIMIT if peer.handshake is not None
                                 else self.message_limit)
        except MessageTooLarge as exc:
            self._too_large(peer, exc)
            return
        for data in frames:
            if peer.closed:
                return
            if peer.parked is not None:
                peer.held.append(data)  # one request at a time per connection
            elif peer.handshake is not None:
                self._handshake_step(peer, data)
            else:
                self.dispatcher.request(peer, data)

    def _too_large(self, peer, exc):
        if peer.handshake is not None:
            # Not a client of ours: an HTTP request, a port scan, another protocol (b"GET "
            # read as a length is 1195725856), or a peer that lost sync. The authkey handshake
            # never sends more than HANDSHAKE_LIMIT bytes at once.
            logger.warning(
                "dropped a connection before it authenticated: its first frame announces %d "
                "bytes, over the handshake's limit of %d (not a django-tasks-shared client: "
                "an HTTP request or another protocol sent to this address?)",
                exc.size, HANDSHAKE_LIMIT)
        else:
            logger.warning("dropped a client connection: a message of %d bytes, over the "
                           "limit of %d (MAX_PAYLOAD plus 1 MiB)", exc.size, exc.limit)
        self.close(peer)

    def _handshake_step(self, peer, data):
        reply, state = peer.handshake.step(data)
        if reply is not None:
            peer.queue_raw(reply)
            self._dirty.append(peer)
        if state == "done":
            peer.handshake = None
        elif state == "failed":
            if reply is None:
                self.close(peer)
            else:
                peer.close_after_flush = True

    def close(self, peer):
        if peer.closed:
            return
        peer.closed = True
        self.peers.pop(peer.fd, None)
        self._hot.discard(peer)
        self._held.pop(peer, None)
        self.store.meta["connections"] = len(self.peers)
        self.dispatcher.closed(peer)
        try:
            self._poller.unregister(peer.fd, peer.hot)
        except (OSError, ValueError):
            pass
        peer.sock.close()

    def _close_all(self):
        deadline = time.monotonic() + STOP_FLUSH
        self._release_held()
        if self._held:  # never acknowledge what is not durable, even when stopping
            logger.error("%d repl(ies) not sent: their changes could not be written to "
                         "STATE_DIR", len(self._held))
            for peer in self._held:
                peer.out = []
        for peer in list(self.peers.values()):
            if peer.out and not peer.closed:
                peer.sock.setblocking(True)
                peer.sock.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    peer.sock.sendall(b"".join(bytes(chunk) for chunk in peer.out))
                except OSError:
                    pass
            self.close(peer)
        self.listener.close()
        self._poller.close()
        self.store.polls.on_work = None
        # The wake-up fd stays open: a supervisor thread may still be inside wake(), and a closed
        # number could be reused by then (its 8 bytes would land in someone else's file).
        self._wake_pending = True  # so that wake() writes nothing from now on
