"""Precise one-shot timers for the simulated replication delays.

The event loop's own timers have millisecond granularity: asyncio's fire up to a millisecond
late, uvloop's (libuv caches its clock per loop iteration) up to about a millisecond early *or*
late. A send must never precede its drawn delay, and every millisecond of lateness shows up
as replication overhead in the study. On Linux a ``timerfd`` fixes both: the kernel's
high-resolution timer makes one file descriptor readable at the absolute ``CLOCK_MONOTONIC``
time of the earliest pending delay, and the event loop simply watches that descriptor. One
timerfd serves every delay of a node (a heap holds the rest).

Where there is no timerfd (not Linux), the loop's timers are used, re-armed when they fire
early, so the never-early guarantee holds everywhere; only the precision differs.

    timers = DelayTimers()
    timers.call_at(time.monotonic() + 0.25, callback, arg)   # never before, soon after
    timers.close()
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import itertools
import logging
import os
import sys
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

CLOCK_MONOTONIC = 1  # time.monotonic() reads this clock on Linux
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = 0o2000000
TFD_TIMER_ABSTIME = 1
LOOP_TICK_S = 0.001  # the event loop's timer granularity


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _load_timerfd():
    """libc's timerfd_create and timerfd_settime, or None where they do not exist."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        create, settime = libc.timerfd_create, libc.timerfd_settime
    except (OSError, AttributeError):
        return None
    create.argtypes, create.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
    settime.restype = ctypes.c_int
    return create, settime


_TIMERFD = _load_timerfd()


class DelayTimers:
    """Calls each callback at or after its due time (``time.monotonic()`` seconds), in due order."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._heap: list[tuple[float, int, Callable, tuple]] = []
        self._order = itertools.count()  # ties keep scheduling order; callbacks are never compared
        self._fd = -1
        self._armed_for: float | None = None
        self._spec = _Itimerspec()
        if _TIMERFD is not None:
            fd = _TIMERFD[0](CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                self._loop.add_reader(fd, self._fired)
            else:
                log.warning("timerfd_create failed (%s); replication delays use the event loop's timers",
                            os.strerror(ctypes.get_errno()))

    @property
    def precise(self) -> bool:
        return self._fd >= 0

    def __len__(self) -> int:
        return len(self._heap)

    def call_at(self, due: float, callback: Callable, *args) -> None:
        if self._fd < 0:
            self._loop.call_later(max(due - time.monotonic(), 0), self._loop_timer_fired, due, callback, args)
            return
        heapq.heappush(self._heap, (due, next(self._order), callback, args))
        if self._armed_for is None or due < self._armed_for:
            self._arm(due)

    def _arm(self, due: float) -> None:
        self._armed_for = due
        seconds = int(due)
        self._spec.it_value.tv_sec = seconds
        self._spec.it_value.tv_nsec = max(int((due - seconds) * 1e9), 1)  # zero would disarm
        if _TIMERFD[1](self._fd, TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None) != 0:
            raise OSError(ctypes.get_errno(), f"timerfd_settime: {os.strerror(ctypes.get_errno())}")

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:  # re-armed since it became readable
            pass
        self._armed_for = None
        now = time.monotonic()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, callback, args = heapq.heappop(heap)
            self._run(callback, args)
        if heap:
            self._arm(heap[0][0])

    def _loop_timer_fired(self, due: float, callback: Callable, args: tuple) -> None:
        early = due - time.monotonic()
        if early > 0:  # uvloop's timers can fire up to about a millisecond early
            self._loop.call_later(max(early, LOOP_TICK_S), self._loop_timer_fired, due, callback, args)
            return
        self._run(callback, args)

    @staticmethod
    def _run(callback: Callable, args: tuple) -> None:
        try:
            callback(*args)
        except Exception:  # one failing callback must not stop the others
            log.exception("delayed callback %r failed", callback)

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        self._heap.clear()
