"""A persistent HTTP/1.1 connection to one peer, for the leader's replication traffic.

Why not Tornado's ``AsyncHTTPClient``: its default client opens a new TCP connection for every
request, and connection set-up plus its per-request machinery cost more than the work a
follower does for an entry. Replication is one long conversation with the same five peers, so
each follower gets one keep-alive connection, used by one request at a time (the replication
channel batches what becomes due meanwhile). Responses are parsed by ``httptools`` (the
llhttp parser, as used by uvicorn), so Content-Length and chunked bodies are both handled by a
complete HTTP/1.1 parser rather than by hand.

    conn = PeerConnection("follower1", 8000)
    status, body = await conn.request("POST", "/replicate", payload, {"X-Replication-Secret": s}, timeout=10)
    conn.close()
"""

from __future__ import annotations

import asyncio

import httptools


class PeerError(Exception):
    """No complete HTTP answer from the peer: refused, reset, closed, timed out or garbled."""


class _ResponseReader(asyncio.Protocol):
    """Feeds bytes to httptools and resolves the waiting request with (status, body)."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.body: list[bytes] = []
        self.keep_alive = True
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(PeerError(f"{self.peer} sent a malformed HTTP response: {exc}"))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(PeerError(f"connection to {self.peer} closed before the answer" + (f": {exc}" if exc else "")))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))

    def _fail(self, error: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


class PeerConnection:
    """One keep-alive connection to ``host:port``, (re)opened on demand; one request at a time."""

    def __init__(self, host: str, port: int, connect_timeout: float = 10.0) -> None:
        self.host, self.port = host, port
        self.peer = f"{host}:{port}"
        self.connect_timeout = connect_timeout
        self._reader: _ResponseReader | None = None
        self._host_header = f"Host: {self.peer}\r\n".encode()

    @classmethod
    def to(cls, address: str, connect_timeout: float = 10.0) -> PeerConnection:
        host, _, port = address.rpartition(":")
        return cls(host, int(port), connect_timeout)

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                      timeout: float = 10.0) -> tuple[int, bytes]:
        """Send one request and return (status, body); raise PeerError when no full answer came."""
        reader = await self._connected()
        waiter = asyncio.get_running_loop().create_future()
        reader.waiter = waiter
        head = [f"{method} {path} HTTP/1.1\r\n".encode(), self._host_header,
                f"Content-Length: {len(body)}\r\n".encode()]
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}\r\n".encode())
        head.append(b"\r\n")
        reader.transport.write(b"".join(head) + body)
        # A plain timer rather than asyncio.wait_for, which would wrap every request in a task.
        timer = asyncio.get_running_loop().call_later(timeout, self._time_out, waiter, f"{method} {path}", timeout)
        try:
            status, answer = await waiter
        except BaseException:
            self.close()  # a late answer would be read as the next request's: start afresh
            raise
        finally:
            timer.cancel()
        if not reader.keep_alive:
            self.close()
        return status, answer

    def _time_out(self, waiter: asyncio.Future, what: str, timeout: float) -> None:
        if not waiter.done():
            waiter.set_exception(PeerError(f"{self.peer} did not answer {what} within {timeout:g} s"))

    async def _connected(self) -> _ResponseReader:
        if self._reader is not None and not self._reader.closed:
            return self._reader
        loop = asyncio.get_running_loop()
        try:
            _, reader = await asyncio.wait_for(
                loop.create_connection(lambda: _ResponseReader(self.peer), self.host, self.port),
                self.connect_timeout)
        except asyncio.TimeoutError:
            raise PeerError(f"cannot connect to {self.peer} within {self.connect_timeout:g} s") from None
        except OSError as exc:
            raise PeerError(f"cannot connect to {self.peer}: {exc.strerror or exc}") from None
        self._reader = reader
        return reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.transport.close()
            self._reader = None
