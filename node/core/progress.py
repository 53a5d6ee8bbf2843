"""What the leader knows of one follower: which entries it confirmed durable, and its health.

    progress = FollowerProgress("follower1:8000")
    progress.confirmed(2); progress.confirmed(1)   # out of order
    progress.match                                  # 2
"""

from __future__ import annotations


class FollowerProgress:
    """Confirmations arrive out of order (every send has its own delay), so ``match`` is the
    highest seq below which every entry is confirmed; confirmations above a hole wait in
    ``_ahead``. ``failing_since`` is the time of the first failure in a row (None while
    healthy): it decides when a follower counts as down.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.node_id: str | None = None
        self.match = 0
        self._ahead: set[int] = set()
        self.last_error: str | None = None
        self.failing_since: float | None = None
        self.installing = False  # fetching a snapshot: confirms nothing towards the quorum
        self.learner = False  # a new member still catching up: confirms nothing either
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

    def failed(self, error: str, now: float) -> bool:
        """Note a failure; True if it is the first of a run (worth one log line)."""
        first = self.last_error is None
        if self.failing_since is None:
            self.failing_since = now
        self.last_error = error
        return first

    def recovered(self) -> bool:
        """Note a success; True if the follower was failing until now."""
        was_failing = self.last_error is not None
        self.last_error, self.failing_since = None, None
        return was_failing

    def _advance(self) -> None:
        while self.match + 1 in self._ahead:
            self.match += 1
            self._ahead.remove(self.match)
