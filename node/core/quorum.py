"""When is a write acknowledged? Once ``quorum`` distinct followers confirmed its entry durable;
and when has it waited too long? At its deadline, with the confirmations it had.

Confirmations are counted per entry, not as a prefix: every send has its own random delay, so
follower A may hold entry 5 durably before entry 4, and write 5 needs nothing from write 4.

    quorum = WriteQuorum(quorum=2, timeout_ms=10_000)
    quorum.expect(7, now=0.0)
    quorum.confirm(7, "f1")          # None: one of two
    quorum.confirm(7, "f2")          # 2: acknowledged with two confirmations
    quorum.expire(now=10.0)          # []: nothing left to time out
"""

from __future__ import annotations

from collections import deque


class QuorumTimeout(Exception):
    """The quorum was not reached in time; the entry stays in the log and keeps replicating."""

    def __init__(self, seq: int, confirmations: int, quorum: int, timeout_ms: int):
        self.seq, self.confirmations, self.quorum, self.timeout_ms = seq, confirmations, quorum, timeout_ms
        super().__init__(
            f"write quorum not reached: {confirmations} of {quorum} required follower confirmations "
            f"arrived within WRITE_TIMEOUT={timeout_ms} ms; entry seq {seq} stays in the leader's log "
            f"and keeps replicating, so the write may still become visible on followers"
        )


class WriteQuorum:
    """The writes waiting for their quorum: seq -> the followers that confirmed it.

    Deadlines are kept in a queue in the order writes were expected; ``now`` never goes back,
    so that is also deadline order and the next deadline is always at the front.
    """

    def __init__(self, quorum: int, timeout_ms: int) -> None:
        self.quorum = quorum
        self.timeout_ms = timeout_ms
        self._voters: dict[int, set[str]] = {}
        self._deadlines: deque[tuple[float, int]] = deque()

    def __len__(self) -> int:
        return len(self._voters)

    def expect(self, seq: int, now: float) -> None:
        """Start counting for ``seq``; it times out ``timeout_ms`` after ``now``."""
        self._voters[seq] = set()
        self._deadlines.append((now + self.timeout_ms / 1000, seq))

    def confirm(self, seq: int, follower: str) -> int | None:
        """Count ``follower``'s confirmation of ``seq``; the confirmations if this one completed
        the quorum (the write is acknowledged and forgotten), else None. A confirmation for a
        write that is not waiting (already answered) or a repeated one counts for nothing."""
        voters = self._voters.get(seq)
        if voters is None:
            return None
        voters.add(follower)
        if len(voters) < self.quorum:
            return None
        del self._voters[seq]
        return len(voters)

    def confirmations(self, seq: int) -> int:
        return len(self._voters.get(seq, ()))

    def expire(self, now: float) -> list[QuorumTimeout]:
        """Forget every write whose deadline has come, and say how far each got."""
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, seq = self._deadlines.popleft()
            voters = self._voters.pop(seq, None)
            if voters is not None:
                expired.append(QuorumTimeout(seq, len(voters), self.quorum, self.timeout_ms))
        return expired

    def next_deadline(self) -> float | None:
        """The earliest deadline of a write still waiting (None if none waits)."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][1] not in self._voters:  # answered already: drop lazily
            deadlines.popleft()
        return deadlines[0][0] if deadlines else None
