"""One follower's channel: which of its entries to send, when, and together with which.

An entry becomes *due* for a follower at its own drawn time (the simulated network lag,
``[MIN_DELAY, MAX_DELAY]`` after it was written, drawn independently per entry and follower).
The channel sends what is due, one request at a time; entries that fall due while a request
is out travel together in the next one, as a real log shipper does.

Under load an idle channel also waits briefly for company (``BATCH_LINGER_US``, like MySQL's
``binlog_group_commit_sync_delay`` with its ``..._no_delay_count`` or Kafka's ``linger.ms``):
while fewer entries are due than its previous request carried, it waits for that many, at most
the linger after the oldest fell due. A follower's request costs far more than an entry in it
(a wakeup, a log sync and an answer on each side), so ten writes in one request instead of two
or three roughly halve the followers' CPU per write. A lone writer's previous request carried
one entry, so its entries never wait; under the study's random delays entries rarely fall due
together, so they rarely wait either. No entry is ever released before its drawn time.

A failed request is retried with backoff (``INITIAL_BACKOFF_S`` doubling to ``MAX_BACKOFF_S``)
for ``RETRY_WINDOW_S`` after each entry fell due; a follower failing for ``DOWN_AFTER_S``
counts as down: each entry gets one attempt and no retry storm follows. Either way it
converges, because a follower pulls what it lacks from the leader's ``/log`` by itself.

    channel = FollowerChannel(FollowerProgress("f1:8000"), max_batch_bytes=1 << 20, linger_s=0.002)
    channel.push(1, b'{"seq":1,...}', due_at=0.25)
    channel.poll(now=0.1)        # None: not due yet
    channel.poll(now=0.25)       # Batch(seqs=[1], ...): send it
    channel.answered(applied_seq=1, node_id="f1", now=0.26)   # [1]: confirmed
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from node.core.progress import FollowerProgress

log = logging.getLogger(__name__)

RETRY_WINDOW_S = 30.0
INITIAL_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0
DOWN_AFTER_S = 2.0


@dataclass(slots=True)
class Due:
    """An entry whose delay to this follower has elapsed (or will at ``due_at``)."""

    seq: int
    payload: Any  # what the adapter sends for this entry; only its len() matters here
    due_at: float


@dataclass(slots=True)
class Batch:
    """One request to a follower: entries in the order they fell due."""

    address: str
    entries: list[Due]

    @property
    def seqs(self) -> list[int]:
        return [d.seq for d in self.entries]


class FollowerChannel:
    """The shipping policy for one follower; one request out at a time.

    ``expected`` is how many entries the previous request carried: how many an idle channel
    waits for (at most the linger). ``backoff_until`` holds the channel after a failure.
    """

    def __init__(self, progress: FollowerProgress, max_batch_bytes: int, linger_s: float = 0.0) -> None:
        self.progress = progress
        self.max_batch_bytes = max_batch_bytes
        self.linger_s = linger_s
        self._delayed: list[tuple[float, int, Any]] = []  # heap of (due_at, seq, payload)
        self.due: deque[Due] = deque()
        self.out: Batch | None = None
        self.expected = 1
        self.backoff_until: float | None = None
        self.backoff_s = INITIAL_BACKOFF_S
        self.closed = False

    def __len__(self) -> int:
        """Entries not yet confirmed or given up: delayed, due or being sent."""
        return len(self._delayed) + len(self.due) + (len(self.out.entries) if self.out else 0)

    def push(self, seq: int, payload: Any, due_at: float) -> None:
        """Make ``seq`` due for this follower at ``due_at``."""
        if not self.closed:
            heapq.heappush(self._delayed, (due_at, seq, payload))

    def poll(self, now: float) -> Batch | None:
        """The request to send now, if the channel is ready for one."""
        self._release(now)
        if self.out is not None or self.closed or not self.due:
            return None
        if self.backoff_until is not None:
            if now < self.backoff_until:
                return None
            self.backoff_until = None
        if len(self.due) < self.expected and now < self.due[0].due_at + self.linger_s:
            return None
        self.out = Batch(self.progress.address, self._take_batch())
        self.expected = len(self.out.entries)
        return self.out

    def next_deadline(self) -> float | None:
        """When :meth:`poll` may next have something to send (None: only after an event)."""
        times = [self._delayed[0][0]] if self._delayed else []
        if self.due and self.out is None and not self.closed:
            if self.backoff_until is not None:
                times.append(self.backoff_until)
            elif len(self.due) < self.expected:
                times.append(self.due[0].due_at + self.linger_s)
            else:
                times.append(self.due[0].due_at)
        return min(times) if times else None

    def answered(self, applied_seq: int, node_id: str | None, now: float) -> list[int]:
        """The follower confirmed the request out; the seqs it confirmed durable."""
        batch, self.out = self.out, None
        if batch is None:  # no request out: nothing to confirm
            return []
        progress = self.progress
        if progress.recovered():
            log.info("follower %s reachable again", progress.address)
        progress.node_id = node_id
        progress.requests += 1
        progress.entries_sent += len(batch.entries)
        for d in batch.entries:
            progress.confirmed(d.seq)
        progress.reported_applied(applied_seq)
        self.backoff_s = INITIAL_BACKOFF_S
        return batch.seqs

    def refused(self, error: str, now: float) -> None:
        """The follower refused the request (a 4xx): its verdict, so no retry."""
        batch, self.out = self.out, None
        if batch is None:
            return
        self.progress.last_error = f"refused seq {batch.seqs[0]}..{batch.seqs[-1]} with {error}"
        log.error("%s %s", self.progress.address, self.progress.last_error)
        self.backoff_s = INITIAL_BACKOFF_S

    def failed(self, error: str, now: float) -> None:
        """The request got no usable answer: put its entries back (unless the follower is down
        or they are too old) and hold the channel for the backoff."""
        batch, self.out = self.out, None
        if batch is None:
            return
        if self.progress.failed(error, now):
            log.warning("replication to %s failing: %s; it will pull missed entries from /log when back",
                        self.progress.address, error)
        if self.closed:
            return
        self._requeue(batch, error, now)
        self.backoff_until = now + self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, MAX_BACKOFF_S)

    def close(self) -> None:
        self.closed = True
        self._delayed.clear()
        self.due.clear()

    def _release(self, now: float) -> None:
        """Move every entry whose drawn time has come from the delays to the due queue."""
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            due_at, seq, payload = heapq.heappop(delayed)
            self.due.append(Due(seq, payload, due_at))

    def _take_batch(self) -> list[Due]:
        """The due entries in order, as many as fit one request (always at least one)."""
        batch = [self.due.popleft()]
        size = len(batch[0].payload)
        while self.due and size + len(self.due[0].payload) + 1 <= self.max_batch_bytes:
            size += len(self.due[0].payload) + 1
            batch.append(self.due.popleft())
        return batch

    def _requeue(self, batch: Batch, error: str, now: float) -> None:
        if self.progress.down_for(now) > DOWN_AFTER_S:
            return
        missing = [d for d in batch.entries if d.seq > self.progress.match]
        retry = [d for d in missing if d.due_at > now - RETRY_WINDOW_S]
        expired = [d.seq for d in missing if d.due_at <= now - RETRY_WINDOW_S]
        if expired:
            log.warning("gave up pushing seq %d..%d to %s after %g s (%s); it will pull them from /log",
                        expired[0], expired[-1], self.progress.address, RETRY_WINDOW_S, error)
        self.due.extendleft(reversed(retry))
