"""A minimal HTTP/1.1 keep-alive client, so that a benchmark loads the servers rather than itself.

Tornado's AsyncHTTPClient builds request and response objects, header dictionaries and
callbacks in Python for every request; at thousands of writes per second that costs about as
much CPU as the node handling the write, and on a small machine the client then competes
with the nodes for the cores being measured. Here each concurrent client owns one socket,
sends each request as a single bytes object and lets httptools (llhttp, in C) parse the
answer, Content-Length and chunked bodies alike.
"""

from __future__ import annotations

import asyncio

import httptools


class RequestError(ConnectionError):
    """A request got no complete answer; the message names host:port and the cause."""


class RequestTimeout(RequestError, TimeoutError):
    """No complete answer within the per-request timeout."""


class _Protocol(asyncio.Protocol):
    """One connection: feeds received bytes to the parser and hands the finished answer to the waiter."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.body: list[bytes] = []
        self.reusable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(RequestError(f"{self.peer}: malformed HTTP response: {exc}"))

    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        cause = f"{type(exc).__name__}: {exc}" if exc else "connection closed by the server"
        self.fail(RequestError(f"{self.peer}: {cause}"))

    def fail(self, error: RequestError) -> None:
        """End the request in flight with ``error`` and drop the connection: its stream position is unknown."""
        self.reusable = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self.transport is not None:
            self.transport.close()


class HttpConnection:
    """One client's persistent connection to ``host:port``, one request at a time.

    A connection the server closed (idle timeout, ``Connection: close``, a restart) is
    replaced on the next request, so a caller only ever sees the failure of the request that
    was in flight when it happened.
    """

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.peer = f"{host}:{port}"
        self.connects = 0
        self._proto: _Protocol | None = None

    async def _connection(self) -> _Protocol:
        if self._proto is not None and self._proto.reusable:
            return self._proto
        self.close()
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self.peer), self.host, self.port), self.timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise RequestError(f"{self.peer}: cannot connect: {type(exc).__name__}: {exc}") from exc
        self.connects += 1
        self._proto = proto
        return proto

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """Send one request and return (status, body); raises RequestError or RequestTimeout."""
        proto = await self._connection()
        if proto.waiter is not None:
            raise RuntimeError(f"{self.peer}: one request at a time per connection")
        lines = [f"{method} {path} HTTP/1.1\r\nHost: {self.peer}\r\n"]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.extend(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        lines.append("\r\n")
        loop = asyncio.get_running_loop()
        waiter = proto.waiter = loop.create_future()
        proto.transport.write("".join(lines).encode("latin-1") + (body or b""))
        timer = loop.call_later(self.timeout, proto.fail,
                                RequestTimeout(f"{self.peer}: no answer to {method} {path} within {self.timeout:g} s"))
        try:
            return await waiter
        finally:
            timer.cancel()
            if proto.waiter is waiter:  # the caller gave up: a late answer must not pass for the next one
                proto.fail(RequestError(f"{self.peer}: request cancelled"))

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
