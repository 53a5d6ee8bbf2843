"""A persistent HTTP/1.1 connection to one peer: the leader's replication traffic, the benchmark.

Why not Tornado's ``AsyncHTTPClient``: its default client opens a new TCP connection for every
request, and connection set-up plus its per-request machinery cost more than the work a
follower does for an entry. Replication is one long conversation with the same five peers, so
each follower gets one keep-alive connection, used by one request at a time (the replication
channel batches what becomes due meanwhile). Responses are parsed by ``httptools`` (the
llhttp parser, as used by uvicorn), so Content-Length and chunked bodies are both handled by a
complete HTTP/1.1 parser rather than by hand.

    conn = PeerConnection("follower1", 8000, timeout=10)
    status, body = await conn.request("POST", "/replicate", payload, {"X-Replication-Secret": s})
    conn.send("POST", "/replicate", payload, headers, 10, callback)   # the same, without a task
    conn.close()

The benchmark's load client uses it too: it must cost the client as little as possible.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httptools


class PeerError(ConnectionError):
    """No complete HTTP answer from the peer: refused, reset, closed, timed out or garbled."""


class PeerTimeout(PeerError, TimeoutError):
    """The peer did not answer in time."""


Callback = Callable[[int, bytes, "PeerError | None"], None]


class _ResponseReader(asyncio.Protocol):
    """Feeds bytes to httptools and hands each complete response to the waiting callback."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.callback: Callback | None = None
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
            self.fail(PeerError(f"{self.peer}: malformed HTTP response: {exc}"))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fail(PeerError(f"{self.peer}: connection closed by the server before the answer" + (f": {exc}" if exc else "")))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        callback, self.callback = self.callback, None
        if callback is not None:
            callback(self.parser.get_status_code(), b"".join(self.body), None)

    def fail(self, error: PeerError) -> None:
        callback, self.callback = self.callback, None
        if callback is not None:
            callback(0, b"", error)


class PeerConnection:
    """One keep-alive connection to ``host:port``, (re)opened on demand; one request at a time.

    :meth:`send` is callback-based so the replication path costs no task per request;
    :meth:`request` is the awaitable form for everything else.
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host, self.port = host, port
        self.peer = f"{host}:{port}"
        self.timeout = timeout  # for connecting, and for an answer when a call names none
        self.connects = 0
        self._reader: _ResponseReader | None = None
        self._host_header = f"Host: {self.peer}\r\n".encode()
        self._connecting: asyncio.Task | None = None
        self._warming: asyncio.Task | None = None
        self._closes = 0

    @classmethod
    def to(cls, address: str, timeout: float = 10.0) -> PeerConnection:
        host, _, port = address.rpartition(":")
        return cls(host, int(port), timeout)

    @property
    def busy(self) -> bool:
        return self._reader is not None and self._reader.callback is not None

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None, timeout: float | None = None) -> tuple[int, bytes]:
        """Send one request and return (status, body); raise PeerError (PeerTimeout) when no
        full answer came."""
        answered = asyncio.get_running_loop().create_future()

        def done(status: int, answer: bytes, error: PeerError | None) -> None:
            if answered.done():
                return
            if error is None:
                answered.set_result((status, answer))
            else:
                answered.set_exception(error)

        self.send(method, path, body, headers, self.timeout if timeout is None else timeout, done)
        try:
            return await answered
        except asyncio.CancelledError:
            self.close()  # the caller gave up: a late answer must not pass for the next one's
            raise

    def send(self, method: str, path: str, body: bytes | None, headers: dict[str, str] | None, timeout: float,
             callback: Callback) -> None:
        """Send one request; ``callback(status, body, None)`` gets the answer, or
        ``callback(0, b"", PeerError)`` if none came within ``timeout`` seconds."""
        self.send_prepared(self.request_head(method, path, headers), body, timeout, callback)

    def request_head(self, method: str, path: str, headers: dict[str, str] | None = None) -> bytes:
        """The request line and headers but Content-Length: a sender that repeats the same
        request (the replication channel) makes this once."""
        head = [f"{method} {path} HTTP/1.1\r\n".encode(), self._host_header]
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}\r\n".encode())
        return b"".join(head)

    def send_prepared(self, head: bytes, body: bytes | None, timeout: float, callback: Callback) -> None:
        """:meth:`send` with a head from :meth:`request_head`."""
        if self.busy:
            raise RuntimeError(f"{self.peer}: one request at a time per connection")
        if body is None:
            message = head + b"\r\n"
        else:
            message = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
        timer = asyncio.get_running_loop().call_later(timeout, self._time_out, head, timeout)
        callback = self._with_timer(callback, timer)
        reader = self._reader
        if reader is not None and not reader.closed:
            reader.callback = callback
            reader.transport.write(message)
        else:
            self._connecting = asyncio.ensure_future(self._connect_and_send(message, callback, self._closes))

    def _with_timer(self, callback: Callback, timer: asyncio.TimerHandle) -> Callback:
        def answered(status: int, body: bytes, error: PeerError | None) -> None:
            timer.cancel()
            if error is not None or not (self._reader and self._reader.keep_alive):
                self.close()  # after a failure the stream's state is unknown: start afresh
            callback(status, body, error)
        return answered

    def warm_up(self) -> None:
        """Connect now, in the background, so the first request does not pay for the name
        lookup and the handshake. A peer that cannot be reached now is no error: the first
        request connects again and reports what fails."""
        if self._reader is None and self._warming is None:
            self._warming = asyncio.ensure_future(self._warm())

    async def _warm(self) -> None:
        try:
            reader = await self._open()
        except (asyncio.TimeoutError, OSError):
            return
        finally:
            self._warming = None
        if self._reader is None:
            self._reader = reader
        else:
            reader.transport.close()

    async def _open(self) -> _ResponseReader:
        """A new connection to the peer (raises asyncio.TimeoutError or OSError)."""
        _, reader = await asyncio.wait_for(asyncio.get_running_loop().create_connection(
            lambda: _ResponseReader(self.peer), self.host, self.port), self.timeout)
        self.connects += 1
        return reader

    async def _connect_and_send(self, message: bytes, callback: Callback, closes: int) -> None:
        """Connect (or take the warm-up's connection) and send; ``closes`` is the close count
        when the request was made."""
        try:
            if self._warming is not None:  # a warm-up connect is under way: it may serve this request
                await asyncio.shield(self._warming)
            reader = self._reader
            if reader is None or reader.closed:
                reader = await self._open()
                if self._closes != closes:  # closed while connecting: drop the new connection
                    reader.transport.close()
                    callback(0, b"", PeerError(f"{self.peer}: connection closed before the request was sent"))
                    return
                self._reader = reader
        except asyncio.TimeoutError:
            callback(0, b"", PeerTimeout(f"{self.peer}: cannot connect within {self.timeout:g} s"))
            return
        except OSError as exc:
            callback(0, b"", PeerError(f"{self.peer}: cannot connect: {exc.strerror or exc}"))
            return
        except asyncio.CancelledError:  # the request's own timeout ran out first, or closing
            callback(0, b"", PeerTimeout(f"{self.peer}: not connected before the request's timeout"))
            return
        reader.callback = callback
        reader.transport.write(message)

    def _time_out(self, head: bytes, timeout: float) -> None:
        what = head.split(b" HTTP/", 1)[0].decode(errors="replace")
        error = PeerTimeout(f"{self.peer}: no answer to {what} within {timeout:g} s")
        if self._reader is not None and self._reader.callback is not None:
            self._reader.fail(error)
        elif self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()  # still connecting: give up on it

    def close(self) -> None:
        self._closes += 1  # a connect still under way must not outlive this close
        if self._warming is not None:
            self._warming.cancel()
            self._warming = None
        if self._reader is not None:
            self._reader.callback = None
            self._reader.transport.close()
            self._reader = None
