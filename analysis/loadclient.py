"""The benchmark's load client: one keep-alive HTTP/1.1 connection, one request at a time.

A closed-loop benchmark measures the server plus its clients, so the client must cost as little
CPU per request as possible, or at 100 connections the machine's cores would go to the load
generator instead of the system under test. Tornado's ``AsyncHTTPClient`` costs several times
more per request (its own request objects, header parsing in Python, and by default a new TCP
connection per request). This client keeps one connection per simulated user open for the whole
run, writes each request with one ``transport.write`` and parses answers with ``httptools``
(llhttp, the parser of Node.js, as used by uvicorn), so Content-Length and chunked bodies are
both handled by a complete HTTP/1.1 parser rather than by hand. ``analysis.bench`` drives the
store, the no-op baseline and etcd's JSON gateway with it.

    conn = LoadConnection("127.0.0.1", 8000, timeout=30)
    status, body = await conn.request("POST", "/write", b'{"key": "a", "value": 1}', headers)
    conn.close()
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httptools


class RequestFailed(ConnectionError):
    """No complete HTTP answer from the server: refused, reset, closed, timed out or garbled."""


class RequestTimeout(RequestFailed, TimeoutError):
    """The server did not answer in time."""


Callback = Callable[[int, bytes, "RequestFailed | None"], None]


class _ResponseReader(asyncio.Protocol):
    """Feeds bytes to httptools and hands each complete response to the waiting callback."""

    def __init__(self, server: str) -> None:
        self.server = server
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
            self.fail(RequestFailed(f"{self.server}: malformed HTTP response: {exc}"))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fail(RequestFailed(f"{self.server}: connection closed by the server before the answer"
                                + (f": {exc}" if exc else "")))

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

    def fail(self, error: RequestFailed) -> None:
        callback, self.callback = self.callback, None
        if callback is not None:
            callback(0, b"", error)


class LoadConnection:
    """One keep-alive connection to ``host:port``, opened on the first request and again after
    a failure (the stream's state is then unknown); one request at a time."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host, self.port = host, port
        self.server = f"{host}:{port}"
        self.timeout = timeout  # for connecting, and for an answer when a call names none
        self.connects = 0
        self._reader: _ResponseReader | None = None
        self._host_header = f"Host: {self.server}\r\n".encode()
        self._connecting: asyncio.Task | None = None
        self._closes = 0

    @property
    def busy(self) -> bool:
        return self._reader is not None and self._reader.callback is not None

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None, timeout: float | None = None) -> tuple[int, bytes]:
        """Send one request and return (status, body); raise RequestFailed (RequestTimeout) when
        no full answer came."""
        answered = asyncio.get_running_loop().create_future()

        def done(status: int, answer: bytes, error: RequestFailed | None) -> None:
            if answered.done():
                return
            if error is None:
                answered.set_result((status, answer))
            else:
                answered.set_exception(error)

        self._send(method, path, body, headers, self.timeout if timeout is None else timeout, done)
        try:
            return await answered
        except asyncio.CancelledError:
            self.close()  # the caller gave up: a late answer must not pass for the next one's
            raise

    def _send(self, method: str, path: str, body: bytes | None, headers: dict[str, str] | None, timeout: float,
              callback: Callback) -> None:
        if self.busy:
            raise RuntimeError(f"{self.server}: one request at a time per connection")
        head = [f"{method} {path} HTTP/1.1\r\n".encode(), self._host_header]
        head += [f"{name}: {value}\r\n".encode() for name, value in (headers or {}).items()]
        if body is None:
            message = b"".join(head) + b"\r\n"
        else:
            message = b"%sContent-Length: %d\r\n\r\n%s" % (b"".join(head), len(body), body)
        timer = asyncio.get_running_loop().call_later(timeout, self._time_out, method, path, timeout)
        callback = self._with_timer(callback, timer)
        reader = self._reader
        if reader is not None and not reader.closed:
            reader.callback = callback
            reader.transport.write(message)
        else:
            self._connecting = asyncio.ensure_future(self._connect_and_send(message, callback, self._closes))

    def _with_timer(self, callback: Callback, timer: asyncio.TimerHandle) -> Callback:
        def answered(status: int, body: bytes, error: RequestFailed | None) -> None:
            timer.cancel()
            if error is not None or not (self._reader and self._reader.keep_alive):
                self.close()  # after a failure the stream's state is unknown: start afresh
            callback(status, body, error)
        return answered

    async def _connect_and_send(self, message: bytes, callback: Callback, closes: int) -> None:
        """Connect and send; ``closes`` is the close count when the request was made."""
        try:
            _, reader = await asyncio.wait_for(asyncio.get_running_loop().create_connection(
                lambda: _ResponseReader(self.server), self.host, self.port), self.timeout)
        except asyncio.TimeoutError:
            callback(0, b"", RequestTimeout(f"{self.server}: cannot connect within {self.timeout:g} s"))
            return
        except OSError as exc:
            callback(0, b"", RequestFailed(f"{self.server}: cannot connect: {exc.strerror or exc}"))
            return
        except asyncio.CancelledError:  # the request's own timeout ran out first, or closing
            callback(0, b"", RequestTimeout(f"{self.server}: not connected before the request's timeout"))
            return
        self.connects += 1
        if self._closes != closes:  # closed while connecting: drop the new connection
            reader.transport.close()
            callback(0, b"", RequestFailed(f"{self.server}: connection closed before the request was sent"))
            return
        self._reader = reader
        reader.callback = callback
        reader.transport.write(message)

    def _time_out(self, method: str, path: str, timeout: float) -> None:
        error = RequestTimeout(f"{self.server}: no answer to {method} {path} within {timeout:g} s")
        if self._reader is not None and self._reader.callback is not None:
            self._reader.fail(error)
        elif self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()  # still connecting: give up on it

    def close(self) -> None:
        self._closes += 1  # a connect still under way must not outlive this close
        if self._reader is not None:
            self._reader.callback = None
            self._reader.transport.close()
            self._reader = None
