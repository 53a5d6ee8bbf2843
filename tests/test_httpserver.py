"""node.httpserver on the wire: raw sockets against the llhttp server serving a tornado.web.Application.

Each test writes exact request bytes with ``asyncio.open_connection`` and checks the exact answer
bytes, the connection's fate (kept open, or EOF) and what the handlers saw. Every read is bounded by
``TIMEOUT``; a server that fails to answer or to close fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from types import SimpleNamespace
from typing import NamedTuple

import pytest
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler, stream_request_body

from node.httpserver import MAX_HEADER_BYTES, HTTPServer

TIMEOUT = 2.0  # seconds any single expected read may take
HOST = b"Host: test\r\n"
GET_HELLO = b"GET /hello HTTP/1.1\r\n" + HOST + b"\r\n"
JSON_TYPE = "application/json; charset=UTF-8"


# --- the application ------------------------------------------------------------------------------


class Base(RequestHandler):
    def initialize(self, state: SimpleNamespace) -> None:
        self.state = state


class Hello(Base):
    def get(self) -> None:
        self.write("hello")

    def head(self) -> None:
        self.write("hello")  # Tornado sends Content-Length: 5 and drops the body


class Echo(Base):
    def post(self) -> None:
        self.write(b"echo:" + self.request.body)


class Named(Base):
    """Logs when it starts and ends; ``?delay=`` seconds of work in between."""

    async def get(self, name: str) -> None:
        await self.work(name)
        self.write(name)

    async def post(self, name: str) -> None:
        await self.work(name)
        self.write(name.encode() + b":" + self.request.body)

    async def work(self, name: str) -> None:
        self.state.log.append(f"start {name}")
        delay = float(self.get_query_argument("delay", "0"))
        if delay:
            await asyncio.sleep(delay)  # the slow answer is the behaviour under test
        self.state.log.append(f"end {name}")


class Twice(Base):
    async def get(self) -> None:
        self.write("first-")
        await self.flush()  # headers out without Content-Length: the answer is chunked
        self.write("second")
        await self.flush()


class Wait(Base):
    """Works until the test releases it; counts the close notifications it gets."""

    async def get(self) -> None:
        self.state.started.set()
        await self.state.release.wait()
        self.write("done")

    def on_connection_close(self) -> None:
        self.state.close_calls += 1
        self.state.closed.set()


@stream_request_body
class Stream(Base):
    """Takes its body chunk by chunk, each through a Future that completes later."""

    async def data_received(self, chunk: bytes) -> None:
        self.state.active += 1
        self.state.max_active = max(self.state.max_active, self.state.active)
        await asyncio.sleep(0.005)
        self.state.chunks.append(chunk)
        self.state.active -= 1

    def post(self) -> None:
        self.write(b"%d chunks" % len(self.state.chunks))


@stream_request_body
class SmallLimit(Base):
    """Lowers the body limit for its own request only, as Tornado's set_max_body_size does."""

    def prepare(self) -> None:
        self.request.connection.set_max_body_size(10)

    def data_received(self, chunk: bytes) -> None:
        pass

    def post(self) -> None:
        self.write("small")


class Header(Base):
    def get(self) -> None:
        self.write({"value": self.request.headers.get("X-Spaced")})


class Peer(Base):
    def get(self) -> None:
        self.write({"remote_ip": self.request.remote_ip, "address": list(self.request.connection.context.address)})


class Overrun(Base):
    async def get(self) -> None:
        self.set_header("Content-Length", "5")
        self.write("hel")
        await self.flush()
        self.write("lo!!")  # two bytes more than declared
        await self.flush()


class Underrun(Base):
    def get(self) -> None:
        self.set_header("Content-Length", "10")
        self.write("abc")


class HalfThenWait(Base):
    """Declares 10 bytes, sends 3, then finishes only after its client has gone."""

    async def get(self) -> None:
        self.set_header("Content-Length", "10")
        self.write("abc")
        await self.flush()
        self.state.started.set()
        await self.state.closed.wait()
        self.state.finish_error = None
        try:
            self.request.connection.finish()
        except Exception as exc:  # noqa: BLE001 - what the test looks at
            self.state.finish_error = exc
        self._finished = True
        self.state.finished.set()

    def on_connection_close(self) -> None:
        self.state.closed.set()


class NoContent(Base):
    def get(self) -> None:
        self.set_status(204)


class Teapot(Base):
    SUPPORTED_METHODS = RequestHandler.SUPPORTED_METHODS + ("BREW",)

    def brew(self) -> None:
        self.set_status(418)
        self.write("brewed")


class Smuggled(Base):
    def get(self) -> None:
        self.state.smuggled += 1
        self.write("smuggled")


class Big(Base):
    """A 32 MiB answer: far more than the socket buffers hold while the client does not read."""

    async def get(self) -> None:
        self.write(b"x" * (32 << 20))
        flushed = self.flush()
        self.state.flushing.set()
        await flushed


@pytest.fixture
def state():
    return SimpleNamespace(log=[], chunks=[], active=0, max_active=0, close_calls=0, smuggled=0,
                           started=asyncio.Event(), release=asyncio.Event(), closed=asyncio.Event(),
                           flushing=asyncio.Event(), finished=asyncio.Event())


def make_app(state: SimpleNamespace) -> Application:
    handlers = [("/hello", Hello), ("/echo", Echo), (r"/named/(\w+)", Named), ("/twice", Twice), ("/wait", Wait),
                ("/stream", Stream), ("/small", SmallLimit), ("/peer", Peer), ("/overrun", Overrun),
                ("/underrun", Underrun), ("/nocontent", NoContent), ("/teapot", Teapot), ("/smuggled", Smuggled),
                ("/big", Big), ("/half", HalfThenWait), ("/header", Header)]
    return Application([(path, handler, {"state": state}) for path, handler in handlers])


@pytest.fixture
def app(state):
    return make_app(state)


# --- the client side ------------------------------------------------------------------------------


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes  # decoded
    head: bytes  # status line and headers, exactly as received
    raw_body: bytes  # the body exactly as received (chunk framing included)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_response(reader: asyncio.StreamReader, head_request: bool = False) -> Response:
    """Read one answer, framed as its headers say (Content-Length, chunked, or up to EOF)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    status_line, *lines = head[:-4].decode("latin1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1", head
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    status = int(status)
    if head_request or status in (204, 304) or 100 <= status < 200:
        return Response(status, headers, b"", head, b"")
    if headers.get("transfer-encoding") == "chunked":
        raw = body = b""
        for _ in range(1000):
            size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT)
            size = int(size_line, 16)
            data = await asyncio.wait_for(reader.readexactly(size + 2), TIMEOUT)
            raw += size_line + data
            body += data[:-2]
            if size == 0:
                return Response(status, headers, body, head, raw)
        raise AssertionError("more than 1000 chunks")
    if "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), TIMEOUT)
    else:
        body = await read_rest(reader)
    return Response(status, headers, body, head, body)


async def read_rest(reader: asyncio.StreamReader) -> bytes:
    """Everything the server still sends, up to its EOF (which must come within TIMEOUT)."""
    return await asyncio.wait_for(reader.read(), TIMEOUT)


async def exchange(port: int, data: bytes) -> tuple[Response, bytes]:
    """Send ``data`` on a fresh connection: the first answer, and whatever follows it up to EOF."""
    reader, writer = await connect(port)
    try:
        writer.write(data)
        answer = await read_response(reader)
        return answer, await read_rest(reader)
    finally:
        writer.close()


def assert_json_error(answer: Response, status: int, reason: bytes) -> str:
    """A server-made refusal: exact status line, JSON body, Connection: close. Returns the message."""
    assert answer.head.startswith(b"HTTP/1.1 %d %s\r\n" % (status, reason)), answer.head
    assert answer.headers["content-type"] == JSON_TYPE
    assert answer.headers["connection"] == "close"
    assert int(answer.headers["content-length"]) == len(answer.body)
    document = json.loads(answer.body)
    assert list(document) == ["error"] and isinstance(document["error"], str)
    return document["error"]


@contextlib.asynccontextmanager
async def serving(app, **options):
    """A server with non-default options on an unused port; stopped and emptied afterwards."""
    sock, port = bind_unused_port()
    server = HTTPServer(app, **options)
    await server.add_sockets([sock])
    try:
        yield server, port
    finally:
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), TIMEOUT)


# --- keep-alive -----------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_two_requests_on_one_connection_are_both_answered(http_server, http_port):
    """HTTP/1.1 keeps the connection: a second request on it gets its own answer."""
    reader, writer = await connect(http_port)
    writer.write(GET_HELLO)
    first = await read_response(reader)
    writer.write(b"POST /echo HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\n\r\nabc")
    second = await read_response(reader)
    assert len(http_server.connections) == 1  # both answers came over the one connection
    writer.close()
    assert (first.status, first.body, "connection" in first.headers) == (200, b"hello", False)
    assert (second.status, second.body) == (200, b"echo:abc")


@pytest.mark.gen_test
async def test_http11_connection_close_is_answered_with_close_and_the_server_hangs_up(http_server, http_port):
    """``Connection: close`` from an HTTP/1.1 client: the answer says ``Connection: close``, then EOF."""
    answer, rest = await exchange(http_port, b"GET /hello HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n" + GET_HELLO)
    assert (answer.status, answer.body, answer.headers["connection"]) == (200, b"hello", "close")
    assert rest == b""  # the request behind it is not answered


@pytest.mark.gen_test
async def test_http10_without_keep_alive_is_closed_after_the_answer(http_server, http_port):
    """An HTTP/1.0 request without keep-alive is answered, then the server closes."""
    answer, rest = await exchange(http_port, b"GET /hello HTTP/1.0\r\n\r\n")
    assert (answer.status, answer.body, answer.headers.get("connection")) == (200, b"hello", None)
    assert rest == b""


@pytest.mark.gen_test
async def test_http10_keep_alive_is_acknowledged_and_the_connection_stays_open(http_server, http_port):
    """HTTP/1.0 with ``Connection: keep-alive``: the answer says ``Connection: Keep-Alive`` and a second request is served."""
    reader, writer = await connect(http_port)
    request = b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    writer.write(request)
    first = await read_response(reader)
    writer.write(request)
    second = await read_response(reader)
    writer.close()
    assert [(a.status, a.body, a.headers["connection"]) for a in (first, second)] == [(200, b"hello", "Keep-Alive")] * 2


@pytest.mark.gen_test
async def test_head_answer_has_no_body_and_the_next_answer_is_framed_after_it(http_server, http_port):
    """HEAD gets Content-Length but no body bytes, so the answer pipelined behind it parses cleanly."""
    reader, writer = await connect(http_port)
    writer.write(b"HEAD /hello HTTP/1.1\r\n" + HOST + b"\r\n" + GET_HELLO)
    head = await read_response(reader, head_request=True)
    get = await read_response(reader)
    writer.close()
    assert (head.status, head.headers["content-length"], "transfer-encoding" in head.headers) == (200, "5", False)
    assert (get.status, get.body) == (200, b"hello")


@pytest.mark.gen_test
async def test_204_answer_has_no_framing_headers_and_keeps_the_connection(http_server, http_port):
    """A 204 carries neither Content-Length nor Transfer-Encoding, and the connection goes on."""
    reader, writer = await connect(http_port)
    writer.write(b"GET /nocontent HTTP/1.1\r\n" + HOST + b"\r\n" + GET_HELLO)
    empty = await read_response(reader)
    hello = await read_response(reader)
    writer.close()
    assert empty.status == 204 and "content-length" not in empty.headers and "transfer-encoding" not in empty.headers
    assert (hello.status, hello.body) == (200, b"hello")


# --- pipelining -----------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_pipelined_requests_are_answered_in_order_one_at_a_time(http_server, http_port, state):
    """Three requests in one write, the first slow: answers in request order, handlers never overlap."""
    reader, writer = await connect(http_port)
    writer.write(b"".join(b"GET /named/%s HTTP/1.1\r\n%s\r\n" % (path, HOST)
                          for path in (b"slow?delay=0.05", b"second", b"third")))
    answers = [await read_response(reader) for _ in range(3)]
    writer.close()
    assert [a.body for a in answers] == [b"slow", b"second", b"third"]
    assert state.log == ["start slow", "end slow", "start second", "end second", "start third", "end third"]


@pytest.mark.gen_test
async def test_pipelined_bodies_go_to_their_own_requests(http_server, http_port):
    """Pipelined POSTs behind a slow one each get their own body, in order."""
    reader, writer = await connect(http_port)
    writer.write(b"".join(b"POST /named/%s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (path, HOST, len(body), body)
                          for path, body in ((b"slow?delay=0.05", b"1"), (b"b", b"22"), (b"c", b"333"))))
    answers = [await read_response(reader) for _ in range(3)]
    writer.close()
    assert [a.body for a in answers] == [b"slow:1", b"b:22", b"c:333"]


# --- chunked bodies -------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_chunked_request_body_is_decoded_for_the_handler(http_server, http_port):
    """A chunked request body reaches the handler decoded and whole."""
    reader, writer = await connect(http_port)
    writer.write(b"POST /echo HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
    answer = await read_response(reader)
    writer.close()
    assert (answer.status, answer.body) == (200, b"echo:hello world")


@pytest.mark.gen_test
async def test_handler_flushing_twice_gets_a_chunked_answer(http_server, http_port):
    """Two flushes: ``Transfer-Encoding: chunked``, one chunk each, ``0\\r\\n\\r\\n`` at the end, connection reusable."""
    reader, writer = await connect(http_port)
    writer.write(b"GET /twice HTTP/1.1\r\n" + HOST + b"\r\n")
    answer = await read_response(reader)
    writer.write(GET_HELLO)
    after = await read_response(reader)
    writer.close()
    assert answer.headers["transfer-encoding"] == "chunked" and "content-length" not in answer.headers
    assert answer.raw_body == b"6\r\nfirst-\r\n6\r\nsecond\r\n0\r\n\r\n"
    assert (after.status, after.body) == (200, b"hello")


# --- Expect: 100-continue -------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_expect_100_continue_is_answered_before_the_body_is_sent(http_server, http_port):
    """``Expect: 100-continue``: the interim 100 comes before the client sends the body, the answer after it."""
    reader, writer = await connect(http_port)
    writer.write(b"POST /echo HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    writer.write(b"hello")
    answer = await read_response(reader)
    writer.close()
    assert interim == b"HTTP/1.1 100 (Continue)\r\n\r\n"
    assert (answer.status, answer.body) == (200, b"echo:hello")


@pytest.mark.gen_test
async def test_expect_100_continue_with_too_large_body_gets_413_and_no_continue(state):
    """A declared body over the limit is refused at once: 413 first, never a 100."""
    async with serving(make_app(state), max_body_size=1000) as (_, port):
        answer, rest = await exchange(port, b"POST /echo HTTP/1.1\r\n" + HOST
                                      + b"Content-Length: 1001\r\nExpect: 100-continue\r\n\r\n")
    assert_json_error(answer, 413, b"Payload Too Large")
    assert rest == b""


# --- malformed requests ---------------------------------------------------------------------------


MALFORMED = {
    "garbage": b"\x00\x01\x02 not http at all\r\n\r\n",
    "bad content-length": b"POST /echo HTTP/1.1\r\n" + HOST + b"Content-Length: \xc2\xb2\r\n\r\n",
    "bad chunk size": b"POST /echo HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "content-length and chunked": b"POST /echo HTTP/1.1\r\n" + HOST
                                  + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.gen_test
async def test_malformed_request_gets_json_400_and_the_connection_closes(http_server, http_port, request_bytes):
    """A request llhttp cannot parse: 400 with a JSON error, ``Connection: close``, nothing served after it."""
    answer, rest = await exchange(http_port, request_bytes + GET_HELLO)
    assert assert_json_error(answer, 400, b"Bad Request").startswith("malformed HTTP request: ")
    assert rest == b""


@pytest.mark.gen_test
async def test_good_request_before_a_malformed_one_is_answered_first(http_server, http_port):
    """Good then garbage in one write: the good answer, then the 400, then EOF."""
    reader, writer = await connect(http_port)
    writer.write(b"GET /named/good?delay=0.02 HTTP/1.1\r\n" + HOST + b"\r\n" + b"\x00garbage\r\n\r\n")
    good = await read_response(reader)
    bad = await read_response(reader)
    rest = await read_rest(reader)
    writer.close()
    assert (good.status, good.body) == (200, b"good")
    assert assert_json_error(bad, 400, b"Bad Request").startswith("malformed HTTP request: ")
    assert rest == b""


# --- size limits ----------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_header_block_over_64_kib_gets_431(http_server, http_port):
    """A request whose headers add up to more than 64 KiB is refused with a JSON 431."""
    answer, rest = await exchange(http_port, b"GET /hello HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n")
    assert assert_json_error(answer, 431, b"Request Header Fields Too Large") == \
        "request line and headers exceed 65536 bytes"
    assert rest == b""


@pytest.mark.gen_test
async def test_request_line_over_64_kib_gets_431_before_it_ends(http_server, http_port):
    """A request line still arriving past 64 KiB is refused without waiting for its end."""
    answer, rest = await exchange(http_port, b"GET /" + b"a" * (MAX_HEADER_BYTES + 1))
    assert_json_error(answer, 431, b"Request Header Fields Too Large")
    assert rest == b""


@pytest.mark.gen_test
async def test_header_line_over_64_kib_gets_431_before_it_ends(http_server, http_port):
    """One header line still arriving past 64 KiB is refused without waiting for its end (memory stays bounded)."""
    prefix = b"GET / HTTP/1.1\r\n" + HOST + b"X-Big: "
    answer, rest = await exchange(http_port, prefix + b"a" * (MAX_HEADER_BYTES + 1 - len(prefix) + 16))
    assert_json_error(answer, 431, b"Request Header Fields Too Large")
    assert rest == b""


@pytest.mark.gen_test
async def test_content_length_over_max_body_size_gets_413_before_the_body_is_sent(state):
    """A declared Content-Length over ``max_body_size`` is refused from the headers alone."""
    async with serving(make_app(state), max_body_size=1000) as (_, port):
        answer, rest = await exchange(port, b"POST /echo HTTP/1.1\r\n" + HOST + b"Content-Length: 1001\r\n\r\n")
    assert assert_json_error(answer, 413, b"Payload Too Large") == \
        "request body of 1001 bytes exceeds this server's limit of 1000 bytes"
    assert rest == b""


@pytest.mark.gen_test
async def test_body_of_exactly_max_body_size_is_accepted(state):
    """The limit is inclusive: a body of exactly ``max_body_size`` bytes is served."""
    async with serving(make_app(state), max_body_size=1000) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"POST /echo HTTP/1.1\r\n" + HOST + b"Content-Length: 1000\r\n\r\n" + b"b" * 1000)
        answer = await read_response(reader)
        writer.close()
    assert (answer.status, answer.body) == (200, b"echo:" + b"b" * 1000)


@pytest.mark.gen_test
async def test_chunked_body_growing_past_max_body_size_gets_413(state):
    """A chunked body is counted as it arrives: past ``max_body_size`` it is refused with a JSON 413."""
    async with serving(make_app(state), max_body_size=1000) as (_, port):
        answer, rest = await exchange(port, b"POST /echo HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
                                      + b"258\r\n" + b"c" * 600 + b"\r\n258\r\n" + b"c" * 600 + b"\r\n")
    assert assert_json_error(answer, 413, b"Payload Too Large") == \
        "request body exceeds this server's limit of 1000 bytes"
    assert rest == b""


@pytest.mark.gen_test
async def test_set_max_body_size_applies_to_that_request_only(http_server, http_port):
    """A handler's ``set_max_body_size`` does not carry over to the next request on the connection."""
    reader, writer = await connect(http_port)
    writer.write(b"POST /small HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\n\r\nabc")
    small = await read_response(reader)
    writer.write(b"POST /echo HTTP/1.1\r\n" + HOST + b"Content-Length: 100\r\n\r\n" + b"e" * 100)
    echo = await read_response(reader)
    writer.close()
    assert (small.status, small.body) == (200, b"small")
    assert (echo.status, echo.body) == (200, b"echo:" + b"e" * 100)


# --- versions, Host, methods, upgrades ------------------------------------------------------------


@pytest.mark.gen_test
async def test_whitespace_around_a_header_value_is_not_part_of_it(http_server, http_port):
    """``X-Name:  value \t`` reaches the handler as ``value``, as with Tornado's own parser."""
    answer, _ = await exchange(http_port, b"GET /header HTTP/1.1\r\n" + HOST + b"X-Spaced:  value \t\r\n"
                                          b"Connection: close\r\n\r\n")
    assert answer.status == 200 and json.loads(answer.body) == {"value": "value"}


@pytest.mark.gen_test
async def test_header_value_with_a_control_character_gets_json_400(http_server, http_port):
    """A field value with a control character is a 400 with a JSON error, not a hang-up."""
    answer, _ = await exchange(http_port, b"GET /hello HTTP/1.1\r\n" + HOST + b"X-Bad: a\x01b\r\n\r\n")
    message = assert_json_error(answer, 400, b"Bad Request")
    assert message.startswith("malformed HTTP request")


@pytest.mark.gen_test
async def test_http2_request_line_gets_505(http_server, http_port):
    """``HTTP/2.0`` in the request line: a JSON 505, then EOF."""
    answer, rest = await exchange(http_port, b"GET /hello HTTP/2.0\r\n" + HOST + b"\r\n")
    assert assert_json_error(answer, 505, b"HTTP Version Not Supported") == "HTTP/2.0 is not supported; use HTTP/1.1"
    assert rest == b""


@pytest.mark.gen_test
async def test_missing_host_on_http11_gets_400_mentioning_host(http_server, http_port):
    """HTTP/1.1 without Host: a JSON 400 that names the Host header, then EOF."""
    answer, rest = await exchange(http_port, b"GET /hello HTTP/1.1\r\n\r\n")
    assert "Host" in assert_json_error(answer, 400, b"Bad Request")
    assert rest == b""


@pytest.mark.parametrize("request_bytes", [b"GET /hello HTTP/1.1\r\n\r\n",
                                           b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"], ids=["get", "post"])
@pytest.mark.gen_test
async def test_missing_host_is_refused_without_a_server_error(http_server, http_port, caplog, request_bytes):
    """Refusing a request without Host is the client's fault: the server logs no error of its own."""
    answer, rest = await exchange(http_port, request_bytes)
    assert (answer.status, rest) == (400, b"")
    errors = [r.getMessage() for r in caplog.records if r.name == "node.httpserver" and r.levelno >= logging.ERROR]
    assert errors == []


@pytest.mark.gen_test
async def test_unknown_method_reaches_the_application_which_answers_405(http_server, http_port):
    """A method llhttp does not know goes to the Application (405 for a handler without it), then EOF."""
    answer, rest = await exchange(http_port, b"BREW /hello HTTP/1.1\r\n" + HOST + b"\r\n" + GET_HELLO)
    assert answer.status == 405
    assert answer.headers["server"].startswith("TornadoServer") and answer.headers["connection"] == "close"
    assert rest == b""


@pytest.mark.gen_test
async def test_unknown_method_is_served_by_a_handler_that_supports_it(http_server, http_port):
    """A handler that declares BREW gets the request and its answer goes out whole."""
    answer, rest = await exchange(http_port, b"BREW /teapot HTTP/1.1\r\n" + HOST + b"\r\n")
    assert (answer.status, answer.body, rest) == (418, b"brewed", b"")


@pytest.mark.gen_test
async def test_upgrade_request_is_served_as_plain_http_with_its_body(http_server, http_port, state):
    """An ignored ``Upgrade``: the request keeps its body, which is never read as a request of its own."""
    inner = b"GET /smuggled HTTP/1.1\r\n" + HOST + b"\r\n"
    reader, writer = await connect(http_port)
    writer.write(b"POST /echo HTTP/1.1\r\n" + HOST + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(inner), inner))
    echo = await read_response(reader)
    writer.close()
    assert (echo.status, echo.body) == (200, b"echo:" + inner)
    assert state.smuggled == 0


# --- the handler's view ---------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_client_disconnect_during_async_handler_calls_on_connection_close(http_server, http_port, state):
    """The client hangs up while its handler works: the handler's ``on_connection_close`` runs, once."""
    reader, writer = await connect(http_port)
    writer.write(b"GET /wait HTTP/1.1\r\n" + HOST + b"\r\n")
    try:
        await asyncio.wait_for(state.started.wait(), TIMEOUT)
        writer.close()
        await asyncio.wait_for(state.closed.wait(), TIMEOUT)
    finally:
        state.release.set()
    assert state.close_calls == 1


@pytest.mark.gen_test
async def test_finishing_short_of_content_length_after_the_client_left_is_no_error(http_server, http_port, state):
    """An answer cut short because its client hung up is not the handler's framing error."""
    reader, writer = await connect(http_port)
    writer.write(b"GET /half HTTP/1.1\r\n" + HOST + b"\r\n")
    await asyncio.wait_for(state.started.wait(), TIMEOUT)
    writer.close()
    await asyncio.wait_for(state.closed.wait(), TIMEOUT)
    await asyncio.wait_for(state.finished.wait(), TIMEOUT)
    assert state.finish_error is None


@pytest.mark.gen_test
async def test_async_data_received_gets_every_chunk_in_order_one_at_a_time(http_server, http_port, state):
    """Flow control: an async ``data_received`` gets each chunk in order, the next only after the last completed."""
    chunks = [b"a", b"bb", b"ccc", b"dddd", b"eeeee"]
    reader, writer = await connect(http_port)
    writer.write(b"POST /stream HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
                 + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n")
    answer = await read_response(reader)
    writer.close()
    assert (answer.status, answer.body) == (200, b"5 chunks")
    assert state.chunks == chunks
    assert state.max_active == 1


@pytest.mark.gen_test
async def test_remote_ip_is_the_peer_address(http_server, http_port):
    """``request.remote_ip`` and the connection context's address are the client's own socket address."""
    reader, writer = await connect(http_port)
    writer.write(b"GET /peer HTTP/1.1\r\n" + HOST + b"\r\n")
    answer = await read_response(reader)
    client = writer.get_extra_info("sockname")
    writer.close()
    assert json.loads(answer.body) == {"remote_ip": "127.0.0.1", "address": [client[0], client[1]]}


async def head_and_rest(port: int, path: str) -> tuple[bytes, bytes]:
    """GET ``path`` and read until the server closes: the answer's head and every byte after it."""
    reader, writer = await connect(port)
    writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\n" + HOST + b"\r\n")
    received = await read_rest(reader)
    writer.close()
    head, _, rest = received.partition(b"\r\n\r\n")
    return head, rest


@pytest.mark.gen_test
async def test_writing_more_than_content_length_closes_without_extra_bytes(http_server, http_port):
    """A handler writing past its Content-Length: the declared bytes at most, then EOF, never the excess."""
    head, body = await head_and_rest(http_port, "/overrun")
    assert b"\r\nContent-Length: 5\r\n" in head + b"\r\n"
    assert body == b"hel"


@pytest.mark.gen_test
async def test_writing_less_than_content_length_closes_the_connection(http_server, http_port):
    """A handler finishing short of its Content-Length: what it wrote, then EOF, so the client is not left waiting."""
    head, body = await head_and_rest(http_port, "/underrun")
    assert b"\r\nContent-Length: 10\r\n" in head + b"\r\n"
    assert body == b"abc"


# --- shutdown and idle connections ----------------------------------------------------------------


@pytest.mark.gen_test
async def test_stop_refuses_new_connections_and_serves_open_ones(http_server, http_port):
    """After ``stop()`` new connections are refused; an open keep-alive connection is still served."""
    reader, writer = await connect(http_port)
    writer.write(GET_HELLO)
    before = await read_response(reader)
    http_server.stop()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(connect(http_port), TIMEOUT)
    writer.write(GET_HELLO)
    after = await read_response(reader)
    writer.close()
    assert [(a.status, a.body) for a in (before, after)] == [(200, b"hello")] * 2


@pytest.mark.gen_test
async def test_close_all_connections_closes_idle_keep_alive_connections(http_server, http_port):
    """``close_all_connections()`` returns once every idle keep-alive connection is closed; clients see EOF."""
    clients = [await connect(http_port) for _ in range(2)]
    for reader, writer in clients:
        writer.write(GET_HELLO)
        assert (await read_response(reader)).body == b"hello"
    http_server.stop()
    await asyncio.wait_for(http_server.close_all_connections(), TIMEOUT)
    assert [await read_rest(reader) for reader, _ in clients] == [b"", b""]
    assert http_server.connections == set()
    for _, writer in clients:
        writer.close()


@pytest.mark.gen_test
async def test_close_all_connections_returns_while_a_client_stops_reading(state):
    """Shutdown is not held hostage by a client that stopped reading a large answer."""
    async with serving(make_app(state)) as (server, port):
        reader, writer = await connect(port)
        writer.write(b"GET /big HTTP/1.1\r\n" + HOST + b"\r\n")
        await asyncio.wait_for(state.flushing.wait(), TIMEOUT)
        server.stop()
        closing = asyncio.ensure_future(server.close_all_connections())
        done, _ = await asyncio.wait({closing}, timeout=TIMEOUT)
        writer.transport.abort()  # release the server's buffered answer either way
        await asyncio.wait_for(closing, TIMEOUT)
    assert done == {closing}


@pytest.mark.gen_test
async def test_idle_keep_alive_connection_is_closed_after_idle_timeout(state):
    """With ``idle_timeout=0.2`` an answered keep-alive connection is closed, not before 0.2 s."""
    async with serving(make_app(state), idle_timeout=0.2) as (_, port):
        reader, writer = await connect(port)
        started = time.monotonic()
        writer.write(GET_HELLO)
        answer = await read_response(reader)
        rest = await read_rest(reader)
        elapsed = time.monotonic() - started
        writer.close()
    assert (answer.status, answer.body, rest) == (200, b"hello", b"")
    assert 0.18 <= elapsed < TIMEOUT


@pytest.mark.gen_test
async def test_idle_timeout_does_not_close_a_connection_mid_request(state):
    """A request whose handler outlasts ``idle_timeout`` still gets its answer, and only then the idle close."""
    async with serving(make_app(state), idle_timeout=0.1) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET /named/late?delay=0.3 HTTP/1.1\r\n" + HOST + b"\r\n")
        answer = await read_response(reader)
        rest = await read_rest(reader)
        writer.close()
    assert (answer.status, answer.body, rest) == (200, b"late", b"")
