"""Readers waiting until this node has applied a given sequence number (read-your-writes).

A client that wrote seq S on the leader and then reads a follower with ``?min_seq=S`` must see
its write or no answer at all (DDIA 5.2). The read waits here, without polling and without
holding the loop: each waiter is a Future in a heap ordered by the seq it needs, and the store
wakes every waiter its new ``applied_seq`` reaches. When nobody waits, waking costs one
comparison per applied entry.

    waiters = AppliedWaiters()
    reached = await waiters.wait(17, applied_seq=12, timeout=1.0)   # in a handler
    waiters.wake(17)                                                 # in Store.apply: done, True

A waiter that times out leaves the heap lazily: it is marked done at once, and the heap is
compacted when done waiters are the majority, so timed-out reads for a seq that never comes
(a typo, a seq of another cluster) cannot pile up.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class AppliedWaiters:
    """Futures keyed by the seq they wait for; ``wake(applied_seq)`` resolves the reached ones."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, asyncio.Future]] = []
        self._order = itertools.count()  # ties on seq: never compare Futures
        self._abandoned = 0  # timed out but still in the heap

    def __len__(self) -> int:
        """Waiters still waiting (timed-out ones not counted)."""
        return len(self._heap) - self._abandoned

    async def wait(self, seq: int, applied_seq: int, timeout: float) -> bool:
        """True once ``wake`` reached ``seq`` (at once if ``applied_seq`` already has), False
        after ``timeout`` seconds."""
        if applied_seq >= seq:
            return True
        if timeout <= 0:
            return False
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        heapq.heappush(self._heap, (seq, next(self._order), future))
        timer = loop.call_later(timeout, self._expire, future)
        try:
            return await future
        finally:
            timer.cancel()
            if not future.done():
                future.cancel()
            if future.cancelled():  # the reader itself was cancelled: still in the heap
                self._abandon()

    def wake(self, applied_seq: int) -> None:
        """Resolve every waiter whose seq ``applied_seq`` reached; cheap when none is due."""
        heap = self._heap
        while heap and heap[0][0] <= applied_seq:
            _, _, future = heapq.heappop(heap)
            if future.done():
                self._abandoned -= 1
            else:
                future.set_result(True)

    def _expire(self, future: asyncio.Future) -> None:
        if not future.done():
            future.set_result(False)
            self._abandon()

    def _abandon(self) -> None:
        """Count one done waiter left in the heap; compact once they are the majority."""
        self._abandoned += 1
        if self._abandoned * 2 > len(self._heap):
            self._heap = [item for item in self._heap if not item[2].done()]
            heapq.heapify(self._heap)
            self._abandoned = 0
