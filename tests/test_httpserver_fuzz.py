"""node.httpserver against mangled requests: whatever the bytes, an answer or a hang-up, never a crash.

A property test (hypothesis) takes well-formed requests apart: bytes cut out, doubled, replaced,
whitespace and control characters put into the head, bodies that disagree with their framing,
several requests in one write. The server runs on a loop of its own in a thread; every case
goes over a fresh socket. It must answer each connection with HTTP/1.1 status lines or close it,
and log no error: an error from the server means a request reached code that did not expect it
(as a header value with a trailing space once did, closing the connection without an answer).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httputil import HTTPHeaders, HTTPMessageDelegate, HTTPServerConnectionDelegate, ResponseStartLine

from node.httpserver import HTTPServer

TIMEOUT = 2.0
STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


class Echo(HTTPServerConnectionDelegate):
    """Answers at once, in the same loop step as the request's end: the client's half-close
    (which the server takes as the client leaving, as Tornado does) cannot overtake it."""

    def start_request(self, server_conn, request_conn) -> HTTPMessageDelegate:
        return EchoRequest(request_conn)


class EchoRequest(HTTPMessageDelegate):
    def __init__(self, connection) -> None:
        self.connection, self.size, self.headers = connection, 0, None

    def headers_received(self, start_line, headers) -> None:
        self.headers = headers

    def data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)

    def finish(self) -> None:
        body = b'{"length": %d, "headers": %d}' % (self.size, len(list(self.headers.get_all())))
        headers = HTTPHeaders({"Content-Type": "application/json", "Content-Length": str(len(body))})
        self.connection.write_headers(ResponseStartLine("HTTP/1.1", 200, "OK"), headers, body)
        self.connection.finish()


class ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def server_port():
    """The server on a loop in a thread of its own, for blocking clients."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def start() -> HTTPServer:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        port.append(sock.getsockname()[1])
        server = HTTPServer(Echo(), max_body_size=4096)
        await server.add_sockets([sock])
        return server

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(start())
        ready.set()
        loop.run_forever()
        server.stop()
        loop.run_until_complete(server.close_all_connections())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield port[0]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="module")
def server_errors():
    handler = ErrorRecords()
    loggers = [logging.getLogger(name) for name in ("node.httpserver", "tornado.application", "tornado.general")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


def send(port: int, data: bytes) -> bytes:
    """Write ``data``, then read until the server closes or goes quiet; everything it sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # no more requests: the server answers what it has, then closes
        received = b""
        while len(received) < 1 << 20:  # bounded
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
        return received


GOOD = [
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /b?q=1 HTTP/1.1\r\nHost: x\r\nX-Secret: s3cret\r\nAccept: */*\r\n\r\n",
    b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"key\": \"v\"}\n",
    b"POST /d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /e HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]

NOISE = st.sampled_from([b" ", b"\t", b"\r", b"\n", b"\r\n", b"\x00", b"\x01", b"\x7f", b"\xff", b":", b"0 ",
                         b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n", b"Host: y\r\n",
                         b"Connection: close\r\n", b"Upgrade: h2c\r\nConnection: Upgrade\r\n",
                         b"Expect: 100-continue\r\n", b"HTTP/1.1", b"\xc2\xb2", b"-1", b"99999999999999999999"])


@st.composite
def mangled(draw) -> bytes:
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(GOOD), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "double"]))
        if action == "insert":
            data[at:at] = draw(NOISE | st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif action == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 16))]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=mangled())
def test_mangled_requests_get_answers_or_a_hang_up_never_a_server_error(server_port, server_errors, request):
    received = send(server_port, request)
    if received:
        assert STATUS_LINE.match(received), (request, received[:200])
        statuses = [int(code) for code in STATUS_LINE.findall(received)]
        assert all(100 <= code < 500 or code == 505 for code in statuses), (request, received[:300])
    errors = [record.getMessage() for record in server_errors.records]
    server_errors.records.clear()
    assert not errors, (request, errors)


def test_the_good_requests_are_all_answered(server_port):
    for request in GOOD:
        assert STATUS_LINE.match(send(server_port, request)).group(1) == b"200", request
    assert STATUS_LINE.findall(send(server_port, b"".join(GOOD[:4]))) == [b"200"] * 4
