"""HTTP/1.1 server for Tornado delegates: llhttp (through ``httptools``) on an asyncio Protocol.

Tornado separates the HTTP wire from the application by two interfaces: the server hands
each request to an ``HTTPServerConnectionDelegate`` (our :class:`node.fastpath.NodeServer`,
or a plain ``tornado.web.Application``), which answers through an ``HTTPConnection``. This
module implements the server side of that contract the way Tornado's ``HTTP1Connection``
does (keep-alive rules, chunked answers, ``Expect: 100-continue``, one request at a time per
connection, the close callback), but parses with llhttp, the C parser of Node.js, and reads
and writes through the event loop's own transports instead of Tornado's ``IOStream``.

Why: every write becomes one request to the leader and, per batch, one request to each of
five followers, on two shared cores. Measured on the same machine and client, Tornado's
``HTTPServer`` costs 85 µs of CPU per request for a no-op answer; this server costs 20 µs
with the same delegate. Routing, handlers, validation and error bodies stay Tornado's and
ours, unchanged; only the bytes-to-request step is replaced.

    server = HTTPServer(delegate, max_body_size=64 << 20)
    await server.listen(8000, "0.0.0.0")
    ...
    server.stop(); await server.close_all_connections()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections import deque
from collections.abc import Callable

import httptools
from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPInputError,
    HTTPMessageDelegate,
    HTTPOutputError,
    HTTPServerConnectionDelegate,
    RequestStartLine,
    ResponseStartLine,
)
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets

from node import codec

log = logging.getLogger(__name__)

# Tornado's defaults: 64 KiB of request line and headers, idle keep-alive connections closed
# after an hour.
MAX_HEADER_BYTES = 64 * 1024
IDLE_TIMEOUT_S = 3600.0
CR_OR_LF = re.compile(rb"\r|\n")
METHOD_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")
NO_BODY_STATUSES = (204, 304)


class RequestContext:
    """What ``HTTPServerRequest`` reads from ``connection.context``: the peer and the scheme."""

    __slots__ = ("remote_ip", "protocol", "address")

    def __init__(self, address) -> None:
        self.address = address
        self.remote_ip = address[0] if isinstance(address, tuple) and address else "0.0.0.0"
        self.protocol = "http"

    def __str__(self) -> str:
        return self.remote_ip


class HTTPServer:
    """Serves one delegate on any number of listening sockets; tracks connections for shutdown."""

    def __init__(self, delegate: HTTPServerConnectionDelegate, max_body_size: int = 100 << 20,
                 idle_timeout: float = IDLE_TIMEOUT_S) -> None:
        self.delegate = delegate
        self.max_body_size = max_body_size
        self.idle_timeout = idle_timeout
        self.connections: set[ServerConnection] = set()
        self._servers: list[asyncio.AbstractServer] = []

    async def listen(self, port: int, address: str | None = None) -> None:
        """Bind like Tornado's ``HTTPServer.listen`` (every address of ``address``, SO_REUSEADDR)."""
        await self.add_sockets(bind_sockets(port, address))

    async def add_sockets(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for sock in sockets:
            self._servers.append(await loop.create_server(lambda: ServerConnection(self), sock=sock))

    def stop(self) -> None:
        """Stop accepting; connections already open go on being served."""
        for server in self._servers:
            server.close()
        self._servers.clear()

    async def close_all_connections(self) -> None:
        """Close every open connection and wait until each is gone."""
        while self.connections:
            connection = next(iter(self.connections))
            connection.abort()  # at once, as Tornado does: a client that stops reading cannot hold it
            await asyncio.shield(connection.closed)


class Exchange(HTTPConnection):
    """One request and its answer: what the delegate sees as its ``HTTPConnection``.

    Events of a request that arrives while an earlier one on the same connection is still
    being answered are kept here and played to the delegate in order, as Tornado reads one
    request at a time.
    """

    def __init__(self, connection: ServerConnection, start_line: RequestStartLine, headers: HTTPHeaders,
                 keep_alive: bool) -> None:
        self.connection = connection
        self.context = connection.context
        self.start_line = start_line
        self.headers = headers
        self.keep_alive = keep_alive
        self.delegate: HTTPMessageDelegate | None = None
        # Body chunks, and None for the end, received while the delegate was not ready for them.
        self.events: deque[bytes | None] = deque()
        self.blocked = False  # the delegate returned a Future from its last call: wait for it
        self.read_finished = False
        self.write_started = False
        self.write_finished = False
        self.chunked_output = False
        self.expected_remaining: int | None = None
        self.close_callback: Callable[[], None] | None = None
        self.max_body_size = connection.server.max_body_size
        self.body_bytes = 0
        self.raw_body = 0  # body bytes llhttp skips (see ServerConnection.on_headers_complete)
        self.canned: bytes | None = None  # a server-made answer (malformed request), no delegate

    # --- HTTPConnection -----------------------------------------------------------------------

    def write_headers(self, start_line: ResponseStartLine, headers: HTTPHeaders,
                      chunk: bytes | None = None) -> asyncio.Future:
        request = self.start_line
        status = start_line.code
        self.write_started = True
        self.chunked_output = (
            request.version == "HTTP/1.1" and request.method != "HEAD"
            and status not in NO_BODY_STATUSES and not 100 <= status < 200
            and "Content-Length" not in headers
        )
        if request.version == "HTTP/1.1" and not self.keep_alive:
            headers["Connection"] = "close"
        elif request.version == "HTTP/1.0" and self.keep_alive:
            headers["Connection"] = "Keep-Alive"
        if self.chunked_output:
            headers["Transfer-Encoding"] = "chunked"
        if request.method == "HEAD" or status == 304:
            self.expected_remaining = 0
        elif "Content-Length" in headers:
            self.expected_remaining = int(headers["Content-Length"])
        else:
            self.expected_remaining = None
        lines = [b"HTTP/1.1 %d %s" % (status, start_line.reason.encode("latin1"))]
        lines.extend(f"{name}: {value}".encode("latin1") for name, value in headers.get_all())
        for line in lines:
            if CR_OR_LF.search(line):
                raise ValueError(f"Illegal characters (CR or LF) in header: {line!r}")
        data = b"\r\n".join(lines) + b"\r\n\r\n"
        if chunk:
            data += self._frame(chunk)
        return self.connection.send(data)

    def write(self, chunk: bytes) -> asyncio.Future:
        return self.connection.send(self._frame(chunk))

    def finish(self) -> None:
        if self.expected_remaining and not self.connection.is_closing():
            self.connection.close()
            raise HTTPOutputError(f"Tried to write {self.expected_remaining} bytes less than Content-Length")
        if self.chunked_output:
            self.connection.send(b"0\r\n\r\n")
        self.write_finished = True
        # Answered before the whole request was read: closing is the only way not to read the rest.
        if not self.read_finished:
            self.keep_alive = False
        self.connection.exchange_done(self)

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self.close_callback = callback

    def set_body_timeout(self, timeout: float) -> None:
        """Accepted for compatibility: bodies have no separate timeout here."""

    def set_max_body_size(self, max_body_size: int) -> None:
        """For this request only, as in Tornado."""
        self.max_body_size = max_body_size

    def detach(self):
        raise NotImplementedError("this server does not hand its connections over (no WebSocket)")

    def _frame(self, chunk: bytes) -> bytes:
        if self.expected_remaining is not None:
            self.expected_remaining -= len(chunk)
            if self.expected_remaining < 0:
                self.connection.close()
                raise HTTPOutputError("Tried to write more data than Content-Length")
        if self.chunked_output and chunk:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        return chunk


class ServerConnection(asyncio.Protocol):
    """One client connection: parses requests, plays them to the delegate one at a time."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.context = RequestContext(None)
        self.parser = httptools.HttpRequestParser(self)
        self.exchanges: deque[Exchange] = deque()  # [0] is being answered; the rest wait
        self.reading: Exchange | None = None  # the request whose bytes are being parsed
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future = self._loop.create_future()
        self._url = bytearray()
        self._header_list: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._head_seen = 0  # bytes received since the current request head began, until it ends
        self._in_head = True
        self._raw: Exchange | None = None  # an upgrade request whose body llhttp left to us
        self._paused = False
        self._drain_waiters: list[asyncio.Future] = []
        self._writing_paused = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._refused = False  # a request was refused: the connection ends after the answers before it

    # --- transport events ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.context = RequestContext(transport.get_extra_info("peername"))
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        if self._raw is not None:
            data = self._take_raw_body(data)
            if not data:
                return
        if self._in_head:
            self._head_seen += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # No protocol upgrades here: the request was served as plain HTTP/1.1; go on with a
            # fresh parser for whatever follows it.
            self.parser = httptools.HttpRequestParser(self)
            rest = data[upgrade.args[0]:] if upgrade.args else b""
            if rest:
                self.data_received(rest)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Rejected):
                log.error("error reading a request from %s", self.context, exc_info=exc.__context__)
                self.close()
        except httptools.HttpParserInvalidMethodError as exc:
            if not self._serve_unknown_method(data):
                with contextlib.suppress(_Rejected):
                    self._reject(400, f"malformed HTTP request: {exc}")
        except httptools.HttpParserError as exc:
            if self.transport is not None and not self.transport.is_closing():
                with contextlib.suppress(_Rejected):
                    self._reject(400, f"malformed HTTP request: {exc}")
            return
        # llhttp reports a header line only once it ends: a line that never ends is caught here.
        if self._in_head and self._head_seen > MAX_HEADER_BYTES and not self._refused:
            with contextlib.suppress(_Rejected):
                self._reject(431, f"request line and headers exceed {MAX_HEADER_BYTES} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_idle_timer()
        self.server.connections.discard(self)
        self.server.delegate.on_close(self)
        for exchange in self.exchanges:
            if not exchange.write_finished and exchange.delegate is not None:
                self._tell_closed(exchange)
        self.exchanges.clear()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- parser callbacks (llhttp) ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._stop_if_closing()
        self._url.clear()
        self._header_list = []
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name, value))
        self._count_header_bytes(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        self._stop_if_closing()
        parser = self.parser
        version = parser.get_http_version()
        if not version.startswith("1."):
            self._reject(505, f"HTTP/{version} is not supported; use HTTP/1.1")
        headers = HTTPHeaders()
        try:
            for name, value in self._header_list:
                # A field value excludes the whitespace around it (RFC 9110 5.5), as in Tornado's parser.
                headers.add(name.decode("latin1"), value.decode("latin1").strip(" \t"))
        except HTTPInputError as exc:  # Tornado refuses the field (say, a control character in it)
            self._reject(400, f"malformed HTTP request: {exc}")
        start_line = RequestStartLine(parser.get_method().decode("latin1"), self._url.decode("latin1"),
                                      f"HTTP/{version}")
        self._in_head, self._head_seen = False, 0
        self._cancel_idle_timer()
        exchange = Exchange(self, start_line, headers, parser.should_keep_alive())
        declared = int(headers.get("Content-Length", "0"))
        if parser.should_upgrade():
            # llhttp stops at the head of an upgrade request and leaves its body to the caller.
            # Upgrades are not offered: the request is served as plain HTTP, body included.
            if "Transfer-Encoding" in headers:
                self._reject(400, "a request asking for a protocol upgrade cannot have a chunked body here; "
                                  "send it without the Upgrade header")
            exchange.raw_body = declared
        self.reading = exchange
        self.exchanges.append(exchange)
        if len(self.exchanges) == 1:
            self._dispatch(exchange)  # may raise this request's body limit (set_max_body_size)
        if declared > exchange.max_body_size:
            self._reject(413, f"request body of {declared} bytes exceeds this server's limit of "
                              f"{exchange.max_body_size} bytes")
        self._update_reading()  # a later request waits its turn: answers go out in order

    def on_body(self, body: bytes) -> None:
        self._stop_if_closing()
        exchange = self.reading
        exchange.body_bytes += len(body)
        if exchange.body_bytes > exchange.max_body_size:
            self._reject(413, f"request body exceeds this server's limit of {exchange.max_body_size} bytes")
        self._deliver(exchange, body)

    def on_message_complete(self) -> None:
        self._stop_if_closing()
        if self.reading.raw_body:
            self._raw = self.reading  # its body follows; data_received hands it over
            return
        self._request_read()

    def _request_read(self) -> None:
        exchange, self.reading = self.reading, None
        exchange.read_finished = True
        self._in_head, self._head_seen = True, 0
        self._deliver(exchange, None)

    def _take_raw_body(self, data: bytes) -> bytes:
        """Give an upgrade request the body llhttp skipped; return what follows it."""
        exchange = self._raw
        chunk, rest = data[:exchange.raw_body], data[exchange.raw_body:]
        exchange.raw_body -= len(chunk)
        try:
            if chunk:
                self.on_body(chunk)
            if not exchange.raw_body:
                self._raw = None
                self._request_read()
        except _Rejected:
            return b""
        return rest

    # --- requests and answers -----------------------------------------------------------------

    def _serve_unknown_method(self, data: bytes) -> bool:
        """llhttp knows a fixed list of methods; Tornado, any token. A request with another
        method (``BREW /all``) still goes to the application, which answers it (405 with the
        allowed methods), and the connection closes after: llhttp cannot read what follows.
        Only for a request that starts a read and whose head is complete, else False."""
        if self.exchanges or self.reading is not None:
            return False
        head, complete, _ = data.partition(b"\r\n\r\n")
        request_line, _, header_text = head.partition(b"\r\n")
        parts = request_line.split(b" ")
        if not complete or len(parts) != 3 or not METHOD_TOKEN.fullmatch(parts[0]) \
                or parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
            return False
        try:
            headers = HTTPHeaders.parse(header_text.decode("latin1"))
        except HTTPInputError:
            return False
        method, path, version = (part.decode("latin1") for part in parts)
        exchange = Exchange(self, RequestStartLine(method, path, version), headers, keep_alive=False)
        exchange.read_finished = True
        exchange.events.append(None)
        self._refused = True  # nothing after this request is read
        self.exchanges.append(exchange)
        self._dispatch(exchange)
        return True

    def _dispatch(self, exchange: Exchange) -> None:
        """Hand a request to the delegate: its headers, then whatever of it is already here."""
        if exchange.canned is not None:
            self.send(exchange.canned)
            self.close()
            return
        exchange.delegate = self.server.delegate.start_request(self, exchange)
        if not self._call(exchange, exchange.delegate.headers_received, exchange.start_line, exchange.headers):
            return
        if exchange.headers.get("Expect") == "100-continue" and not exchange.read_finished \
                and not exchange.write_started \
                and int(exchange.headers.get("Content-Length", "0")) <= exchange.max_body_size:
            self.send(b"HTTP/1.1 100 (Continue)\r\n\r\n")
        self._pump(exchange)

    def _deliver(self, exchange: Exchange, chunk: bytes | None) -> None:
        """A body chunk (or, for None, the end of the request) for ``exchange``: to its delegate
        now, or in order once the delegate is ready for it."""
        if exchange.delegate is None or exchange.blocked or exchange.events:
            exchange.events.append(chunk)
            self._update_reading()
        elif not exchange.write_finished:
            self._call(exchange, exchange.delegate.finish if chunk is None else exchange.delegate.data_received,
                       *(() if chunk is None else (chunk,)))

    def _pump(self, exchange: Exchange) -> None:
        """Play the events kept for ``exchange`` until its delegate asks to wait."""
        while exchange.events and not exchange.blocked and not exchange.write_finished:
            chunk = exchange.events.popleft()
            if chunk is None:
                self._call(exchange, exchange.delegate.finish)
            else:
                self._call(exchange, exchange.delegate.data_received, chunk)
        if exchange.write_finished:
            exchange.events.clear()
        self._update_reading()

    def _unblocked(self, exchange: Exchange, future: asyncio.Future) -> None:
        exchange.blocked = False
        if not future.cancelled() and future.exception() is not None:
            log.error("uncaught exception serving %s %s", exchange.start_line.method,
                      exchange.start_line.path, exc_info=future.exception())
            exchange.write_finished = True
            self.close()
            return
        self._pump(exchange)

    def _dispatch_next(self) -> None:
        if self.exchanges and self.exchanges[0].delegate is None and self.transport is not None \
                and not self.transport.is_closing():
            self._dispatch(self.exchanges[0])

    def _call(self, exchange: Exchange, method, *args) -> bool:
        """Run a delegate method. A request Tornado finds malformed (``HTTPInputError``, such as
        a missing Host) gets a JSON 400; any other exception is logged and ends the
        connection, as in Tornado."""
        try:
            result = method(*args)
            if result is not None:  # the delegate wants nothing more until this is done (flow control)
                exchange.blocked = True
                asyncio.ensure_future(result).add_done_callback(lambda f: self._unblocked(exchange, f))
            return True
        except HTTPInputError as exc:
            if self.reading is exchange:
                self.reading = None
            self._refuse(400, f"malformed HTTP request: {exc}", exchange)
        except Exception:
            log.error("uncaught exception serving %s %s", exchange.start_line.method,
                      exchange.start_line.path, exc_info=True)
            self.close()
        exchange.write_finished = True  # the delegate hears nothing more of this request
        return False

    def exchange_done(self, exchange: Exchange) -> None:
        """The answer to the oldest request is complete: close, or serve the next one."""
        if not self.exchanges or self.exchanges[0] is not exchange:
            return
        self.exchanges.popleft()
        if not exchange.keep_alive:
            self.close()
            return
        if self.exchanges:
            # Next loop step, not here: a burst of pipelined requests answered at once would
            # otherwise nest one call per request.
            self._loop.call_soon(self._dispatch_next)
        else:
            self._update_reading()
            if self.reading is None:
                self._arm_idle_timer()

    def send(self, data: bytes) -> asyncio.Future:
        """Write to the client; the Future is done once the transport's buffer has room again."""
        waiter = self._loop.create_future()
        transport = self.transport
        if transport is None or transport.is_closing():
            waiter.set_exception(StreamClosedError())
            waiter.exception()  # retrieved: a write to a gone client is not an error to report
            return waiter
        transport.write(data)
        if self._writing_paused:
            self._drain_waiters.append(waiter)
        else:
            waiter.set_result(None)
        return waiter

    def close(self) -> None:
        """Close once what is written has gone out."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def abort(self) -> None:
        """Close now, dropping whatever is still unsent."""
        if self.transport is not None:
            self.transport.abort()

    def _reject(self, status: int, message: str) -> None:
        """Refuse the request being parsed (malformed, too large) and stop the parser."""
        broken, self.reading = self.reading, None
        self._refuse(status, message, broken)
        raise _Rejected

    def _refuse(self, status: int, message: str, broken: Exchange | None) -> None:
        """Answer a request the server itself cannot take with a JSON error in its turn, then
        close: after a broken request nothing on the connection can be trusted."""
        body = codec.dumps({"error": message})
        answer = (b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=UTF-8\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n%b"
                  % (status, _REASONS.get(status, b"Error"), len(body), body))
        log.info("%d to %s: %s", status, self.context, message)
        self._refused = True
        self._pause_reading()
        if broken is not None and broken in self.exchanges:
            # Requests after the broken one were never dispatched: they are dropped unanswered.
            while self.exchanges[-1] is not broken:
                self.exchanges.pop()
            self.exchanges.pop()
            if not self.exchanges:  # it was being answered: its delegate loses the connection
                self._tell_closed(broken)
                if broken.write_started:  # half an answer is out: closing is all that is left
                    self.close()
                    return
        if self.exchanges:  # earlier requests are still being answered: this answer waits its turn
            canned = Exchange(self, RequestStartLine("", "", "HTTP/1.1"), HTTPHeaders(), False)
            canned.canned = answer
            self.exchanges.append(canned)
        else:
            self.send(answer)
            self.close()

    def _tell_closed(self, exchange: Exchange) -> None:
        exchange.write_finished = True
        callback, exchange.close_callback = exchange.close_callback, None
        try:
            if callback is not None:
                callback()
            if exchange.delegate is not None:
                exchange.delegate.on_connection_close()
        except Exception:
            log.error("error telling a request its connection closed", exc_info=True)

    def _stop_if_closing(self) -> None:
        """Requests that follow one the connection is closing over are not served."""
        if self.transport is None or self.transport.is_closing() or self._refused:
            raise _Rejected

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            self._reject(431, f"request line and headers exceed {MAX_HEADER_BYTES} bytes")

    def _pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = True
            self.transport.pause_reading()

    def _update_reading(self) -> None:
        """Read only while the request being read can go straight to its delegate."""
        waiting = self._refused or len(self.exchanges) > 1 or any(e.blocked or e.events for e in self.exchanges)
        if waiting:
            self._pause_reading()
        elif self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = False
            self.transport.resume_reading()

    def _arm_idle_timer(self) -> None:
        if self.server.idle_timeout and self._idle_timer is None:
            self._idle_timer = self._loop.call_later(self.server.idle_timeout, self.close)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None


class _Rejected(Exception):
    """Raised through the parser once a request has been refused: stops parsing the rest."""



_REASONS = {400: b"Bad Request", 413: b"Payload Too Large", 431: b"Request Header Fields Too Large",
            505: b"HTTP Version Not Supported"}
