"""CPU seconds of another process, to the nanosecond (the bench's "CPU per task" figures).

    process_cpu(pid) -> clock_getcpuclockid(pid) + clock_gettime(that clock): user + system CPU
                        of the whole process, every thread, also the threads that have exited
                        (the thread-per-connection server's), to the ns
                     -> None when the process is gone

psutil's cpu_times() reads /proc/<pid>/stat in clock ticks (10 ms): over a 500-task W1 of
--quick, one tick is 20 us per task, too coarse for a target of 70 us. Where libc has no
clock_getcpuclockid (not Linux/glibc), it falls back to psutil.
"""

import contextlib
import ctypes
import ctypes.util


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _libc():
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.clock_getcpuclockid.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        libc.clock_gettime.argtypes = [ctypes.c_int, ctypes.POINTER(_Timespec)]
        return libc
    return None


_LIBC = _libc()


def process_cpu(pid):
    """User + system CPU seconds of process `pid` so far, or None if it is gone."""
    if _LIBC is not None:
        clock = ctypes.c_int()
        if _LIBC.clock_getcpuclockid(pid, ctypes.byref(clock)) == 0:
            ts = _Timespec()
            if _LIBC.clock_gettime(clock.value, ctypes.byref(ts)) == 0:
                return ts.tv_sec + ts.tv_nsec * 1e-9
        return None  # ESRCH: no such process (or the clock vanished with it)
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system


def cpu_of(pids):
    """Total CPU seconds of the given pids (those still alive)."""
    return sum(c for c in map(process_cpu, pids) if c is not None)


