"""When is a write acknowledged? One Future per entry, resolved by the confirmation that
completes its quorum; and what the leader knows of each follower's progress.

Both pieces are free of I/O so they can be tested with plain tables.

    tracker = QuorumTracker(quorum=2)
    done = tracker.expect(7)
    tracker.confirm(7, "f1"); tracker.confirm(7, "f2")   # done now holds 2
"""

from __future__ import annotations

import asyncio


class QuorumTimeout(Exception):
    """The quorum was not reached in time; the entry stays in the log and keeps replicating."""

    def __init__(self, seq: int, confirmations: int, quorum: int, timeout_ms: int):
        self.seq, self.confirmations, self.quorum, self.timeout_ms = seq, confirmations, quorum, timeout_ms
        super().__init__(
            f"write quorum not reached: {confirmations} of {quorum} required follower confirmations "
            f"arrived within WRITE_TIMEOUT={timeout_ms} ms; entry seq {seq} stays in the leader's log "
            f"and keeps replicating, so the write may still become visible on followers"
        )


class QuorumTracker:
    """Counts distinct follower confirmations per sequence number.

    Callback-driven on purpose: a write costs one Future and one timer here, no task, so the
    leader's per-write work stays small at thousands of writes per second.
    """

    def __init__(self, quorum: int) -> None:
        self.quorum = quorum
        self._confirmed: dict[int, set[str]] = {}
        self._waiters: dict[int, asyncio.Future] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def expect(self, seq: int, timeout_ms: int | None = None) -> asyncio.Future:
        """Start counting for ``seq``. The Future resolves with the count once the quorum is
        reached, or fails with :class:`QuorumTimeout` after ``timeout_ms`` (if given)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._confirmed[seq] = set()
        self._waiters[seq] = future
        if timeout_ms is not None:
            self._timers[seq] = loop.call_later(timeout_ms / 1000, self._time_out, seq, timeout_ms)
        return future

    def confirm(self, seq: int, follower: str) -> None:
        voters = self._confirmed.get(seq)
        if voters is None:  # the client already has its answer; nothing waits on this seq
            return
        voters.add(follower)
        if len(voters) >= self.quorum:
            future = self._waiters[seq]
            self._forget(seq)
            if not future.done():
                future.set_result(len(voters))

    def confirmations(self, seq: int) -> int:
        return len(self._confirmed.get(seq, ()))

    def _time_out(self, seq: int, timeout_ms: int) -> None:
        future = self._waiters.get(seq)
        if future is None:
            return
        confirmations = self.confirmations(seq)
        self._forget(seq)
        if not future.done():
            future.set_exception(QuorumTimeout(seq, confirmations, self.quorum, timeout_ms))

    def _forget(self, seq: int) -> None:
        self._confirmed.pop(seq, None)
        self._waiters.pop(seq, None)
        timer = self._timers.pop(seq, None)
        if timer is not None:
            timer.cancel()

    async def wait(self, seq: int, future: asyncio.Future, timeout_ms: int) -> int:
        """Wait for ``seq``'s quorum; return the confirmations at that moment or raise QuorumTimeout.

        The replication sends are never cancelled here: only this wait ends.
        """
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_ms / 1000)
        except asyncio.TimeoutError:
            raise QuorumTimeout(seq, self.confirmations(seq), self.quorum, timeout_ms) from None
        finally:
            self._forget(seq)


class FollowerProgress:
    """What the leader knows of one follower: which entries it has confirmed as durable.

    Confirmations arrive out of order, so ``match`` is the highest seq below which every
    entry is confirmed; confirmations above a hole wait in ``_ahead``.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.node_id: str | None = None
        self.match = 0
        self._ahead: set[int] = set()
        self.last_error: str | None = None
        self.failing_since: float | None = None  # loop time of the first failure in a row
        self.requests = 0  # confirmed /replicate requests ...
        self.entries_sent = 0  # ... and the entries they carried (their ratio: the batching)

    def down_for(self, now: float) -> float:
        """Seconds this follower has been failing without a success in between (0 if healthy)."""
        return 0.0 if self.failing_since is None else now - self.failing_since

    def confirmed(self, seq: int) -> None:
        if seq > self.match:
            self._ahead.add(seq)
            self._advance()

    def reported_applied(self, applied_seq: int) -> None:
        """The follower said it applied (so holds durably) every entry up to ``applied_seq``."""
        if applied_seq > self.match:
            self.match = applied_seq
            self._ahead = {s for s in self._ahead if s > applied_seq}
            self._advance()

    def _advance(self) -> None:
        while self.match + 1 in self._ahead:
            self.match += 1
            self._ahead.remove(self.match)
