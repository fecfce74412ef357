"""What the event loop waits on: its file descriptors in two sets, "hot" and "cold", and the
wake-up descriptor other threads write to. Linux gets epoll; other POSIX systems (macOS, the
BSDs: a developer's laptop running the embedded server) get `selectors` and a pipe.

    turn(timeout) ─> [(fd, events), ...]: every ready hot fd (up to MAX_EVENTS), at most
                     COLD_PER_TURN ready cold ones; events are IN / OUT bits
      EpollPoller:     main epoll = hot fds + the listener + the wake fd + the cold epoll itself;
                       the cold epoll is polled (COLD_PER_TURN at most) only when it is ready
      SelectorPoller:  one selector for all; the cold budget is applied here, the cold fds left
                       over are level-triggered and come back next turn
    Wakeup: eventfd (Linux) or a non-blocking pipe: signal() from any thread, drain() in the loop
"""

import os
import select
import selectors

IN, OUT = 1, 4  # epoll's EPOLLIN / EPOLLOUT values, used by both pollers
MAX_EVENTS = 512       # per epoll_wait: beyond it the kernel round-robins the ready fds
COLD_PER_TURN = 32     # events of cold fds (handshakes, idle ones closing) served per turn


class EpollPoller:
    def __init__(self):
        self._main = select.epoll()
        self._cold = select.epoll()
        self._cold_fd = self._cold.fileno()
        self._main.register(self._cold_fd, IN)

    def register(self, fd, hot, events=IN):
        (self._main if hot else self._cold).register(fd, events)

    def modify(self, fd, hot, events):
        (self._main if hot else self._cold).modify(fd, events)

    def unregister(self, fd, hot):
        (self._main if hot else self._cold).unregister(fd)

    def turn(self, timeout):
        ready = self._main.poll(timeout, MAX_EVENTS)
        for i, (fd, _) in enumerate(ready):
            if fd == self._cold_fd:
                ready[i:i + 1] = self._cold.poll(0, COLD_PER_TURN)
                break
        return ready

    def close(self):
        self._main.close()
        self._cold.close()


class SelectorPoller:
    def __init__(self):
        self._selector = selectors.DefaultSelector()
        self._hot = set()

    def register(self, fd, hot, events=IN):
        self._selector.register(fd, _to_selector(events))
        if hot:
            self._hot.add(fd)

    def modify(self, fd, hot, events):
        self._selector.modify(fd, _to_selector(events))

    def unregister(self, fd, hot):
        self._selector.unregister(fd)
        self._hot.discard(fd)

    def turn(self, timeout):
        ready, cold = [], 0
        for key, mask in self._selector.select(timeout):
            if key.fd not in self._hot:
                if cold >= COLD_PER_TURN:
                    continue  # still ready next turn (level-triggered)
                cold += 1
            ready.append((key.fd, (IN if mask & selectors.EVENT_READ else 0) |
                          (OUT if mask & selectors.EVENT_WRITE else 0)))
        return ready

    def close(self):
        self._selector.close()


def _to_selector(events):
    return (selectors.EVENT_READ if events & IN else 0) | \
        (selectors.EVENT_WRITE if events & OUT else 0)


def make_poller(portable=False):
    return SelectorPoller() if portable or not hasattr(select, "epoll") else EpollPoller()


class Wakeup:
    """signal() from any thread makes the loop's next turn return; drain() in the loop."""

    def __init__(self, portable=False):
        if hasattr(os, "eventfd") and not portable:
            self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._write_fd = None
        else:
            self.fd, self._write_fd = os.pipe()
            os.set_blocking(self.fd, False)
            os.set_blocking(self._write_fd, False)

    def signal(self):
        if self._write_fd is None:
            os.eventfd_write(self.fd, 1)
        else:
            try:
                os.write(self._write_fd, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already: the loop will wake

    def drain(self):
        try:
            if self._write_fd is None:
                os.eventfd_read(self.fd)
            else:
                while os.read(self.fd, 4096):
                    pass
        except BlockingIOError:
            pass
