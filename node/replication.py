"""Leader side of replication: push every entry to every follower, concurrently.

Each send first waits its own random delay drawn from ``[MIN_DELAY, MAX_DELAY]`` (the
simulated network lag), then POSTs the entry to the follower's ``/replicate``. A confirmed
send reports to the quorum tracker. Sends are never cancelled when a write's quorum is met:
the remaining followers must still get the entry. A failed send is retried with backoff for a
while; after that the follower still converges, because it pulls missing entries from the
leader's ``/log`` by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import time
from collections.abc import Callable

from tornado.httpclient import AsyncHTTPClient
from tornado.netutil import DefaultExecutorResolver, Resolver

from node.quorum import FollowerProgress
from node.tasks import TaskGroup

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Replication-Secret"
REFUSED = "refused"
RETRY_WINDOW_S = 30.0
MAX_BACKOFF_S = 1.0
SEND_TIMEOUT_S = 10.0
# Tornado's default of 10 simultaneous requests would queue sends behind each other and show
# up as replication lag; 10 concurrent writes x 5 followers alone need 50.
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


class Replicator:
    """Sends entries to followers and tracks what each follower has confirmed.

        replicator = Replicator(progress, 0, 1000, secret="", on_confirm=tracker.confirm)
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
    ) -> None:
        self.progress = progress
        self.min_delay_ms = min_delay_ms
        self.max_delay_ms = max_delay_ms
        self.secret = secret
        self.on_confirm = on_confirm
        self.rng = rng or random.Random()
        self.client = make_http_client()
        self.sends = TaskGroup("replication")

    def replicate(self, seq: int, body: bytes) -> dict[str, float]:
        """Start one delayed send of entry ``seq`` (its JSON ``body``) per follower; return the
        delay (ms) drawn for each."""
        delays = {}
        for address, progress in self.progress.items():
            delay = self.rng.uniform(self.min_delay_ms, self.max_delay_ms)
            delays[address] = round(delay, 3)
            self.sends.spawn(self._send(progress, seq, body, delay))
        return delays

    async def _send(self, progress: FollowerProgress, seq: int, body: bytes, delay_ms: float) -> None:
        await asyncio.sleep(delay_ms / 1000)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_WINDOW_S
        backoff = 0.05
        attempts = 0
        while True:
            attempts += 1
            error = await self._post(progress, seq, body)
            if error is None:
                return
            if error.startswith(REFUSED):  # the follower judged the entry itself: retrying cannot help
                return
            if progress.match >= seq:  # it arrived meanwhile through the follower's catch-up
                return
            if progress.down_for(loop.time()) > DOWN_AFTER_S:
                # A follower failing this long is down: one attempt per entry, no retry storm
                # against it; it pulls what it missed from /log once it is back.
                return
            if loop.time() + backoff > deadline:
                log.warning(
                    "gave up pushing seq %d to %s after %d attempts (%s); it will pull the entry from /log",
                    seq, progress.address, attempts, error,
                )
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _post(self, progress: FollowerProgress, seq: int, body: bytes) -> str | None:
        """One attempt; return None on confirmation, else a description of the failure."""
        try:
            response = await self.client.fetch(
                f"http://{progress.address}/replicate",
                method="POST",
                body=body,
                headers={"Content-Type": "application/json", SECRET_HEADER: self.secret},
                request_timeout=SEND_TIMEOUT_S,
                connect_timeout=SEND_TIMEOUT_S,
                raise_error=False,
            )
        except Exception as exc:  # connection refused, reset, timeout
            return self._failed(progress, f"{type(exc).__name__}: {exc}")
        if 400 <= response.code < 500 and response.code not in (408, 429):
            error = f"{REFUSED} seq {seq} with HTTP {response.code}: {response.body[:300]!r}"
            log.error("%s %s", progress.address, error)
            progress.last_error = error
            return error
        if response.code != 200:
            return self._failed(progress, f"HTTP {response.code}: {response.body[:200]!r}")
        try:
            answer = json.loads(response.body)
            applied = int(answer["applied_seq"])
        except (ValueError, KeyError, TypeError):
            return self._failed(progress, f"unreadable confirmation {response.body[:200]!r}")
        if progress.last_error is not None:
            log.info("follower %s reachable again", progress.address)
            progress.last_error = None
            progress.failing_since = None
        progress.node_id = answer.get("node_id")
        progress.confirmed(seq)
        progress.reported_applied(applied)
        self.on_confirm(seq, progress.address)
        return None

    @staticmethod
    def _failed(progress: FollowerProgress, error: str) -> str:
        if progress.last_error is None:
            log.warning("replication to %s failing: %s; it will pull missed entries from /log when back",
                        progress.address, error)
        if progress.failing_since is None:
            progress.failing_since = asyncio.get_running_loop().time()
        progress.last_error = error
        return error

    async def close(self) -> None:
        await self.sends.cancel_all()
        self.client.close()
