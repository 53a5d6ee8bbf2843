"""A client of the cluster (asyncio, on Tornado's HTTP client): finds the leader from any node,
follows a change of leader, and retries only what is safe to retry.

    client = Client(["127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:8002"])
    result = await client.write("user:1", {"name": "Ada"})   # WriteResult(status="ok", seq=17, ...)
    read = await client.read("user:1", min_seq=result.seq)    # any node; never older than the write
    session = client.session()                               # ... or let a session track the seq
    client.close()

A write ends in one of three statuses:

* ``ok``: the leader answered 200; its quorum has the entry (``seq``, ``term``).
* ``fail``: definitely not applied: refused for its input (400, 404, 413), or no node took it
  before the call's deadline (every answer proved it was not taken: 421, a follower's 403, a
  503 without ``outcome``, a connection refused, or no leader was found at all).
* ``unknown``: it may have been applied: no answer (timeout, connection reset after sending),
  a 503 with ``"outcome": "unknown"`` (the leader stopped while it waited), a 504 (its quorum
  timed out; the entry stays in the log and may still replicate), any other 5xx. It is never
  retried, since a second copy could apply it twice; read the key to find out.

Reads are always safe to retry, on another node. Every call has a total deadline (``timeout``);
retries back off from 50 ms, doubling up to 1 s, within it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tornado.simple_httpclient import SimpleAsyncHTTPClient

from node import codec
from node.client_rules import Backoff, Leader, pick_leader, write_verdict
from node.client_transport import NotSent, normalize_address, send

DEFAULT_TIMEOUT_S = 10.0
HEALTH_TIMEOUT_S = 1.0  # one /health round; a node slower than this is no leader to write to
CONNECT_TIMEOUT_S = 1.0


class ClientError(Exception):
    """A call that produced no result: a read no node answered in time, or no leader found."""


@dataclass
class WriteResult:
    status: str  # ok | fail | unknown
    seq: int | None = None
    term: int | None = None
    leader: str | None = None  # the address that gave the deciding answer
    error: str | None = None
    latency: float = 0.0
    code: int | None = None  # HTTP status of the deciding answer; None without one
    attempts: int = 0
    # The deciding answer's JSON body (``seq``, ``confirmations``, ``quorum``,
    # ``debug.replication_delays_ms``, or ``error``); None without an answer.
    answer: dict | None = None


@dataclass
class ReadResult:
    found: bool
    value: Any
    seq: int | None  # the seq of the write that set the value
    applied_seq: int | None  # how far the answering node was
    node: str  # the address that answered


class Client:
    """The cluster seen from one process; ``addresses`` are ``host:port`` of any of its nodes.

    ``timeout`` bounds each call (seconds); ``leader_wait`` bounds the part of a write spent
    looking for a reachable leader (default: the whole timeout), so that while no leader is up
    writes fail fast instead of each waiting out its deadline.
    """

    def __init__(self, addresses: list[str], timeout: float = DEFAULT_TIMEOUT_S, leader_wait: float | None = None,
                 max_clients: int = 64) -> None:
        if not addresses:
            raise ValueError("Client needs at least one node address (host:port)")
        self.addresses = [normalize_address(a) for a in addresses]
        self.timeout, self.leader_wait, self.max_clients = timeout, leader_wait, max_clients
        self._http: SimpleAsyncHTTPClient | None = None
        self._leader: Leader | None = None
        self._ids: dict[str, str] = {}  # node_id -> the address this client reached it at
        self._discovery: asyncio.Future | None = None
        self._next_read = 0

    def session(self) -> Session:
        """A session that reads its own writes on any node (see :class:`Session`)."""
        return Session(self)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    # --- writes -----------------------------------------------------------------------------

    async def write(self, key: str, value: Any, timeout: float | None = None) -> WriteResult:
        return await self._mutate("POST", "/write", codec.dumps({"key": key, "value": value}), timeout)

    async def delete(self, key: str, timeout: float | None = None) -> WriteResult:
        return await self._mutate("DELETE", "/delete/" + quote(key, safe=""), None, timeout)

    async def clear(self, timeout: float | None = None) -> WriteResult:
        return await self._mutate("DELETE", "/clear", None, timeout)

    async def _mutate(self, method: str, path: str, body: bytes | None, timeout: float | None) -> WriteResult:
        """Send one write to the leader until an answer decides it; retried only when the
        answer proves it was not taken."""
        started = time.monotonic()
        deadline = started + (self.timeout if timeout is None else timeout)
        find_by = deadline if self.leader_wait is None else min(deadline, started + self.leader_wait)
        backoff, redirected, attempts, why = Backoff(), False, 0, "no leader found"
        while True:
            leader = await self._find_leader(find_by)
            if leader is None:
                return WriteResult("fail", error=f"not sent: {why}", latency=time.monotonic() - started,
                                   attempts=attempts)
            attempts += 1
            try:
                code, answer = await send(self._client(), leader.address, method, path, body, deadline - time.monotonic())
            except NotSent as exc:
                why = f"not sent to {leader.address}: {exc}"
                self._forget(leader.address)
                if not await backoff.sleep(find_by):
                    return WriteResult("fail", error=why, latency=time.monotonic() - started, attempts=attempts)
                continue
            except Exception as exc:  # noqa: BLE001 - sent, no answer: outcome unknown
                self._forget(leader.address)  # paused, cut off or gone: ask again next time
                return WriteResult("unknown", leader=leader.address, latency=time.monotonic() - started,
                                   attempts=attempts, error=f"no answer from {leader.address} ({type(exc).__name__}: "
                                                            f"{exc}); the write may have been applied: read the key")
            verdict = write_verdict(code, answer)
            if verdict != "retry":
                return self._decided(verdict, code, answer, leader, started, attempts)
            why = f"{leader.address} did not take it: HTTP {code}: {answer.get('error')}"
            moved = self._follow(answer, leader.address)
            if moved and not redirected:
                redirected = True  # the first redirect goes at once; a ping-pong backs off
                continue
            if not await backoff.sleep(deadline):
                return WriteResult("fail", code=code, error=why, latency=time.monotonic() - started, attempts=attempts,
                                   answer=answer)

    def _decided(self, verdict: str, code: int, answer: dict, leader: Leader, started: float,
                 attempts: int) -> WriteResult:
        term = answer.get("term", leader.term)
        if code == 503:  # the leader is stopping or stepping down: find the next one next time
            self._forget(leader.address)
        elif verdict == "ok" and isinstance(term, int) and self._leader == leader and leader.term is None:
            self._leader = leader._replace(term=term)
        return WriteResult(verdict, seq=answer.get("seq"), term=term, leader=leader.address,
                           error=None if verdict == "ok" else answer.get("error", f"HTTP {code}"),
                           latency=time.monotonic() - started, code=code, attempts=attempts, answer=answer)

    # --- reads ------------------------------------------------------------------------------

    async def read(self, key: str, node: str | None = None, min_seq: int | None = None,
                   timeout: float | None = None) -> ReadResult:
        """Read ``key`` from ``node`` (an address) or any node, retrying on others; with
        ``min_seq`` the answer reflects at least that seq. Raises ClientError if none answers
        in time, or for a 400 (a bad key)."""
        path = "/read/" + quote(key, safe="") + ("" if min_seq is None else f"?min_seq={int(min_seq)}")
        code, answer, address = await self._read(path, node, timeout)
        if code == 404:
            return ReadResult(False, None, None, answer.get("applied_seq"), address)
        return ReadResult(True, answer["value"], answer["seq"], answer.get("applied_seq"), address)

    async def _read(self, path: str, node: str | None, timeout: float | None) -> tuple[int, dict, str]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        candidates = [normalize_address(node)] if node else self._read_order()
        backoff, why = Backoff(), "no node tried"
        while True:
            for address in candidates:
                try:
                    code, answer = await send(self._client(), address, "GET", path, None, deadline - time.monotonic())
                except Exception as exc:  # noqa: BLE001 - a read changes nothing: try another node
                    why = f"{address}: {type(exc).__name__}: {exc}"
                    continue
                if code in (200, 404):
                    return code, answer, address
                if 400 <= code < 500:
                    raise ClientError(f"{address} refused the read: HTTP {code}: {answer.get('error')}")
                why = f"{address}: HTTP {code}: {answer.get('error')}"  # 504: min_seq not reached there
            if not await backoff.sleep(deadline):
                raise ClientError(f"no node answered {path} in time; last: {why}")

    def _read_order(self) -> list[str]:
        """Every node, starting at the next in turn, so reads spread over the cluster."""
        start, self._next_read = self._next_read, (self._next_read + 1) % len(self.addresses)
        return self.addresses[start:] + self.addresses[:start]

    # --- the leader -------------------------------------------------------------------------

    async def leader(self, timeout: float | None = None) -> Leader:
        """Ask the nodes who leads now (node_id, address, term); ClientError if none in time."""
        self._leader = None
        found = await self._find_leader(time.monotonic() + (self.timeout if timeout is None else timeout))
        if found is None:
            raise ClientError(f"no leader found among {', '.join(self.addresses)}")
        return found

    async def _find_leader(self, deadline: float) -> Leader | None:
        """The leader this client knows, else ask /health of every node until one is named."""
        backoff = Backoff()
        while self._leader is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self._discovery is None or self._discovery.done():  # one round at a time, shared
                self._discovery = asyncio.ensure_future(self._discover())
            try:
                await asyncio.wait_for(asyncio.shield(self._discovery), remaining)
            except asyncio.TimeoutError:
                return None
            if self._leader is None and not await backoff.sleep(deadline):
                return None
        return self._leader

    async def _discover(self) -> None:
        async def health(address: str) -> tuple[str, dict] | None:
            try:
                code, answer = await send(self._client(), address, "GET", "/health", None, HEALTH_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - a node down is no answer
                return None
            return (address, answer) if code == 200 else None

        answers = [a for a in await asyncio.gather(*(health(addr) for addr in self.addresses)) if a]
        for address, answer in answers:
            if isinstance(answer.get("node_id"), str):
                self._ids[answer["node_id"]] = address
        found = pick_leader(answers)
        if found is not None:
            self._leader = found._replace(address=self._ids.get(found.node_id, found.address))

    def _follow(self, answer: dict, refused_by: str) -> bool:
        """Take the leader a refusal names (421's leader_id/leader_address, an older follower's
        403 ``leader``); True if that is another node than the one that refused."""
        address = answer.get("leader_address") or answer.get("leader")
        leader_id, term = answer.get("leader_id"), answer.get("term")
        known = self._leader.term if self._leader is not None else None
        if isinstance(term, int) and isinstance(known, int) and term < known:
            return False  # a node behind the times: keep the newer leader
        address = self._ids.get(leader_id, address) if leader_id else address
        if not isinstance(address, str) or address == refused_by:
            self._leader = None
            return False
        self._leader = Leader(leader_id, normalize_address(address), term if isinstance(term, int) else None)
        return True

    def _forget(self, address: str) -> None:
        if self._leader is not None and self._leader.address == address:
            self._leader = None

    def _client(self) -> SimpleAsyncHTTPClient:
        """Tornado's simple client, made on first use on the running loop. It opens a connection
        per request, so a refused connection always means nothing was sent."""
        if self._http is None:
            self._http = SimpleAsyncHTTPClient(force_instance=True, max_clients=self.max_clients,
                                               defaults={"connect_timeout": CONNECT_TIMEOUT_S})
        return self._http


class Session:
    """Read-your-writes across nodes (DDIA 5.2): remembers the highest seq its acknowledged
    writes got and reads with it as ``min_seq``, so any node it reads from shows them.

        session = client.session()
        await session.write("cart", ["book"])
        await session.read("cart")      # on any node: ["book"], never the older cart
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.last_seq = 0

    def _saw(self, result: WriteResult) -> WriteResult:
        if result.status == "ok" and result.seq:
            self.last_seq = max(self.last_seq, result.seq)
        return result

    async def write(self, key: str, value: Any, timeout: float | None = None) -> WriteResult:
        return self._saw(await self.client.write(key, value, timeout))

    async def delete(self, key: str, timeout: float | None = None) -> WriteResult:
        return self._saw(await self.client.delete(key, timeout))

    async def clear(self, timeout: float | None = None) -> WriteResult:
        return self._saw(await self.client.clear(timeout))

    async def read(self, key: str, node: str | None = None, timeout: float | None = None) -> ReadResult:
        return await self.client.read(key, node, self.last_seq or None, timeout)


__all__ = ["Client", "ClientError", "Leader", "ReadResult", "Session", "WriteResult"]
