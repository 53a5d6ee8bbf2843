"""One IOLoop timer for the earliest deadline of a replication core.

The cores (``node.core``) say when they next have something to do; this timer calls back at
that time, never before: the loop's timers can fire early (uvloop's clock is cached per loop
iteration and counts whole milliseconds), and an entry must never be sent before its drawn
delay, so a timer that fires early is re-armed for the rest. uvloop rounds a rest below half a
millisecond to the next loop iteration, so for at most that long the loop looks again at every
iteration: a bounded cost for sends that go about 0.15 ms after their drawn time (median)
rather than up to a millisecond later.

    wakeup = Wakeup(step)        # step() reads time.monotonic() and asks the core what to do
    wakeup.arm(core.next_deadline())
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tornado.ioloop import IOLoop


class Wakeup:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.when: float | None = None  # time.monotonic() of the armed deadline
        self._handle = None

    def arm(self, when: float | None) -> None:
        """Call back at ``when`` (time.monotonic()); None or a later time than the one armed
        leaves an earlier timer in place, which then finds nothing or re-arms."""
        if when is None or (self.when is not None and self.when <= when):
            return
        self.cancel()
        self.when = when
        self._handle = IOLoop.current().call_later(max(0.0, when - time.monotonic()), self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            IOLoop.current().remove_timeout(self._handle)
        self._handle, self.when = None, None

    def _fire(self) -> None:
        when, self._handle, self.when = self.when, None, None
        if time.monotonic() < when:  # early: wait for the rest
            self.arm(when)
            return
        self.callback()
