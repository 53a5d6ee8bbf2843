"""Background tasks that are kept alive and never fail silently.

asyncio holds only a weak reference to a task, so a fire-and-forget ``create_task`` may be
collected mid-flight; and an exception in a task nobody awaits vanishes. Every background
coroutine of a node goes through :class:`TaskGroup` instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine

log = logging.getLogger(__name__)


class TaskGroup:
    """A set of running tasks with a strong reference each and a log line for every failure."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: background task failed", self.name, exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel(self) -> None:
        """Cancel every task without waiting for them to end."""
        for task in list(self._tasks):
            task.cancel()

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class InFlight:
    """Counts operations in progress, so a graceful shutdown can let them finish first.

        with writes:            # around each operation
            ...
        await writes.wait_idle(5.0)
    """

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def started(self) -> None:
        self.count += 1
        if self.count == 1:
            self._idle.clear()

    def finished(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    def __enter__(self) -> InFlight:
        self.started()
        return self

    def __exit__(self, *exc) -> None:
        self.finished()

    async def wait_idle(self, timeout: float) -> bool:
        """True once nothing is in flight; False if ``timeout`` seconds passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
