"""Leader side of replication: push every entry to every follower, concurrently.

Each follower has a :class:`FollowerChannel`. An entry becomes *due* for a follower after its
own random delay drawn from ``[MIN_DELAY, MAX_DELAY]`` (the simulated network lag, drawn
independently per entry and follower). The channel sends what is due over one keep-alive
connection, one request at a time; entries that fall due while a request is out travel
together in the next one, as a real log shipper does.

Under load the channel also waits briefly for company (``BATCH_LINGER_US``, like MySQL's
``binlog_group_commit_sync_delay`` with its ``..._no_delay_count`` or Kafka's ``linger.ms``):
when it is idle and fewer entries are due than its previous request carried, it waits for that
many, at most the linger after the oldest fell due. A follower's request costs far more than
an entry in it (a wakeup, a log sync and an answer on each side), so ten writes in one request
instead of two or three roughly halve the followers' CPU per write. A lone writer's previous
request carried one entry, so its entries never wait; under the study's random delays entries
rarely fall due together, so they rarely wait either.

No entry waits beyond its own delay for anything but the request ahead of it or, at most, the
linger; the study's semantics are unchanged.

A confirmed batch reports every entry to the quorum tracker. Sends are never cancelled when a
write's quorum is met: the remaining followers must still get the entry. A failed batch is
retried with backoff for a while; after that the follower still converges, because it pulls
missing entries from the leader's ``/log`` by itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from tornado.httpclient import AsyncHTTPClient
from tornado.netutil import DefaultExecutorResolver, Resolver

from node import codec
from node.httpclient import PeerConnection, PeerError
from node.quorum import FollowerProgress
from node.timers import DelayTimers

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Replication-Secret"
REFUSED = "refused"
RETRY_WINDOW_S = 30.0
INITIAL_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0
SEND_TIMEOUT_S = 10.0
# For the follower's pulls from /log (Tornado's client): Tornado's default of 10 simultaneous
# requests would make them queue behind each other.
MAX_CLIENTS = 10_000
# A follower whose sends have failed for this long counts as down (see _send).
DOWN_AFTER_S = 2.0


DNS_TTL_S = 2.0


class CachingResolver(Resolver):
    """Resolve each host at most once at a time and keep the answer for a couple of seconds.

    Tornado's default resolver runs every ``getaddrinfo`` in the loop's small shared thread
    pool. When a follower's container is gone, Docker's DNS may take seconds to answer for it;
    a handful of such lookups then occupy every thread and every *other* send waits behind
    them, so a dead follower would delay writes that healthy followers could confirm.
    """

    def initialize(self, ttl: float = DNS_TTL_S) -> None:
        self.ttl = ttl
        self._inner = DefaultExecutorResolver()
        self._cache: dict[tuple, tuple[float, list]] = {}
        self._inflight: dict[tuple, asyncio.Future] = {}

    async def resolve(self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC) -> list:
        key = (host, port, family)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached and cached[0] > now:
            return cached[1]
        lookup = self._inflight.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(self._inner.resolve(host, port, family))
            self._inflight[key] = lookup
            lookup.add_done_callback(lambda _: self._inflight.pop(key, None))
        addresses = await asyncio.shield(lookup)
        self._cache[key] = (time.monotonic() + self.ttl, addresses)
        return addresses


def make_http_client(max_body_size: int | None = None) -> AsyncHTTPClient:
    limits = {} if max_body_size is None else {"max_body_size": max_body_size, "max_buffer_size": max_body_size}
    return AsyncHTTPClient(force_instance=True, max_clients=MAX_CLIENTS, resolver=CachingResolver(), **limits)


@dataclass(slots=True)
class Due:
    """An entry whose delay to one follower has elapsed, waiting for (or in) a request."""

    seq: int
    body: bytes
    due_at: float  # time.monotonic() when it fell due: bounds its wait for company and its retries


class FollowerChannel:
    """Everything the leader sends to one follower: delays, batching, retries, the connection.

    Driven by callbacks, not a task: an entry falling due, an answer arriving, a backoff or a
    linger ending each just try to send what is due. One request is out at a time; a send is
    started at the end of the loop iteration in which it became ready, so entries written in
    the same iteration share it.
    """

    def __init__(self, progress: FollowerProgress, secret: str, on_confirm: Callable[[int, str], None],
                 max_batch_bytes: int, linger_s: float = 0.0, on_ship: Callable[[], None] = lambda: None) -> None:
        self.progress = progress
        self.on_confirm = on_confirm
        self.on_ship = on_ship
        self.max_batch_bytes = max_batch_bytes
        self.linger_s = linger_s
        self.timers: DelayTimers | None = None  # the replicator's: delays and lingers
        self.connection = PeerConnection.to(progress.address, timeout=SEND_TIMEOUT_S)
        self.head = self.connection.request_head(
            "POST", "/replicate", {"Content-Type": "application/json", SECRET_HEADER: secret})
        self.due: deque[Due] = deque()
        self.delayed = 0  # entries still in their delay
        self.out: list[Due] = []  # the batch of the request now out
        self.closed = False
        self._send_planned = False
        self._backing_off = False
        self._backoff = INITIAL_BACKOFF_S
        self.expected = 1  # entries the previous request carried: how many to wait for
        self._linger_armed = False  # a linger timer is pending (it re-checks when it fires)

    def __len__(self) -> int:
        """Entries not yet confirmed or given up: delayed, due or being sent."""
        return self.delayed + len(self.due) + len(self.out)

    def push(self, seq: int, body: bytes, delay_s: float) -> None:
        """Make ``seq`` due for this follower once ``delay_s`` has passed (at once for 0)."""
        if delay_s <= 0:
            self._make_due(seq, body)
        else:
            self.delayed += 1
            self.timers.call_at(time.monotonic() + delay_s, self._delay_over, seq, body)

    def _delay_over(self, seq: int, body: bytes) -> None:
        self.delayed -= 1
        self._make_due(seq, body)

    def _make_due(self, seq: int, body: bytes) -> None:
        if self.closed:
            return
        self.due.append(Due(seq, body, time.monotonic()))
        self._send_when_ready()

    def _send_when_ready(self) -> None:
        """Plan a send for the end of this loop iteration, or a linger timer, or nothing yet.

        Ready means: the channel is idle and either as many entries are due as the previous
        request carried, or the oldest due entry has waited the linger.
        """
        if self._send_planned or self.out or self._backing_off or self.closed or not self.due:
            return
        if len(self.due) < self.expected:
            deadline = self.due[0].due_at + self.linger_s
            if time.monotonic() < deadline:
                if not self._linger_armed:
                    self._linger_armed = True
                    self.timers.call_at(deadline, self._linger_over)
                return
        self._send_planned = True
        asyncio.get_running_loop().call_soon(self._send)

    def _linger_over(self) -> None:
        self._linger_armed = False
        self._send_when_ready()

    def _send(self) -> None:
        self._send_planned = False
        if self.closed or self.out or self._backing_off or not self.due:
            return
        self.out = batch = self._take_batch()
        self.expected = len(batch)
        self.on_ship()
        body = b'{"entries":[' + b",".join(d.body for d in batch) + b"]}"
        self.connection.send_prepared(self.head, body, SEND_TIMEOUT_S, self._answered)

    def _answered(self, status: int, body: bytes, error: PeerError | None) -> None:
        batch, self.out = self.out, []
        if self.closed:
            return
        failure = self._failed(str(error)) if error is not None else self._settle(batch, status, body)
        if failure is None or failure.startswith(REFUSED):  # a refusal is the follower's verdict: no retry
            self._backoff = INITIAL_BACKOFF_S
            self._send_when_ready()
            return
        self._requeue(batch, failure, asyncio.get_running_loop().time())
        self._backing_off = True
        asyncio.get_running_loop().call_later(self._backoff, self._backoff_over)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)

    def _backoff_over(self) -> None:
        self._backing_off = False
        self._send_when_ready()

    def _take_batch(self) -> list[Due]:
        """The due entries in order, as many as fit one request (always at least one)."""
        batch = [self.due.popleft()]
        size = len(batch[0].body)
        while self.due and size + len(self.due[0].body) + 1 <= self.max_batch_bytes:
            size += len(self.due[0].body) + 1
            batch.append(self.due.popleft())
        return batch

    def _requeue(self, batch: list[Due], error: str, now: float) -> None:
        """Put failed entries back for another attempt, except those that need none.

        A follower that has been failing for DOWN_AFTER_S counts as down: each entry gets one
        attempt and no retry storm follows; it pulls what it missed from /log once back. An
        entry is retried for RETRY_WINDOW_S after it fell due.
        """
        if self.progress.down_for(now) > DOWN_AFTER_S:
            return
        give_up_before = time.monotonic() - RETRY_WINDOW_S
        retry = [d for d in batch if d.seq > self.progress.match and d.due_at > give_up_before]
        expired = [d.seq for d in batch if d.seq > self.progress.match and d.due_at <= give_up_before]
        if expired:
            log.warning("gave up pushing seq %d..%d to %s after %g s (%s); it will pull them from /log",
                        expired[0], expired[-1], self.progress.address, RETRY_WINDOW_S, error)
        self.due.extendleft(reversed(retry))

    def _settle(self, batch: list[Due], status: int, body: bytes) -> str | None:
        """Read the follower's answer to ``batch``; None when it confirmed, else the failure."""
        progress = self.progress
        if 400 <= status < 500 and status not in (408, 429):
            error = f"{REFUSED} seq {batch[0].seq}..{batch[-1].seq} with HTTP {status}: {body[:300]!r}"
            log.error("%s %s", progress.address, error)
            progress.last_error = error
            return error
        if status != 200:
            return self._failed(f"HTTP {status}: {body[:200]!r}")
        try:
            answer = codec.loads(body)
            applied = int(answer["applied_seq"])
        except (ValueError, KeyError, TypeError):
            return self._failed(f"unreadable confirmation {body[:200]!r}")
        if progress.last_error is not None:
            log.info("follower %s reachable again", progress.address)
            progress.last_error = None
            progress.failing_since = None
        progress.node_id = answer.get("node_id")
        progress.requests += 1
        progress.entries_sent += len(batch)
        for d in batch:
            progress.confirmed(d.seq)
        progress.reported_applied(applied)
        for d in batch:
            self.on_confirm(d.seq, progress.address)
        return None

    def _failed(self, error: str) -> str:
        progress = self.progress
        if progress.last_error is None:
            log.warning("replication to %s failing: %s; it will pull missed entries from /log when back",
                        progress.address, error)
        if progress.failing_since is None:
            progress.failing_since = asyncio.get_running_loop().time()
        progress.last_error = error
        return error

    def close(self) -> None:
        self.closed = True
        self.due.clear()
        self.connection.close()


class Replicator:
    """Draws the delays of each entry and hands it to every follower's channel.

        replicator = Replicator(progress, 0, 1000, secret="s", on_confirm=tracker.confirm)
        delays = replicator.replicate(entry.seq, body)   # returns at once; sends run in the background
    """

    def __init__(
        self,
        progress: dict[str, FollowerProgress],
        min_delay_ms: int,
        max_delay_ms: int,
        secret: str,
        on_confirm: Callable[[int, str], None],
        rng: random.Random | None = None,
        max_batch_bytes: int = 1 << 20,
        linger_us: int = 0,
        on_ship: Callable[[], None] = lambda: None,
    ) -> None:
        self.min_delay_ms = min_delay_ms
        self.max_delay_ms = max_delay_ms
        self.rng = rng or random.Random()
        self.channels = [FollowerChannel(p, secret, on_confirm, max_batch_bytes, linger_us / 1e6, on_ship)
                         for p in progress.values()]
        self.timers: DelayTimers | None = None  # made with the first entry: it needs the running loop

    @property
    def in_flight(self) -> int:
        return sum(len(channel) for channel in self.channels)

    def replicate(self, seq: int, body: bytes) -> dict[str, float]:
        """Schedule entry ``seq`` (its JSON ``body``) for every follower; return the delay (ms)
        drawn for each."""
        if self.timers is None:
            self.timers = DelayTimers()
            for channel in self.channels:
                channel.timers = self.timers
        delays = {}
        uniform, low, high = self.rng.uniform, self.min_delay_ms, self.max_delay_ms
        for channel in self.channels:
            delay = uniform(low, high)
            delays[channel.progress.address] = round(delay, 3)
            channel.push(seq, body, delay / 1000)
        return delays

    def warm_up(self) -> None:
        """Open every follower's connection now, so the first writes after a (re)start do not
        wait for name lookups and handshakes."""
        for channel in self.channels:
            channel.connection.warm_up()

    async def close(self) -> None:
        for channel in self.channels:
            channel.close()
        if self.timers is not None:
            self.timers.close()
