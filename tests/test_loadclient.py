"""The benchmark's load client (analysis.loadclient) against a real Tornado server on an unused port."""

from __future__ import annotations

import asyncio

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from analysis.loadclient import LoadConnection, RequestFailed, RequestTimeout


class CountingServer(HTTPServer):
    """Counts accepted connections, the only way to tell keep-alive reuse from reconnects."""

    def handle_stream(self, stream, address) -> None:
        self.connections = getattr(self, "connections", 0) + 1
        super().handle_stream(stream, address)


class Echo(RequestHandler):
    def post(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(b'{"echo": ' + self.request.body + b"}")

    def get(self) -> None:
        self.write("plain")


class Chunked(RequestHandler):
    async def get(self) -> None:
        self.write("first-")
        await self.flush()  # headers go out without Content-Length: the body is chunked
        self.write("second")


class Slow(RequestHandler):
    async def get(self) -> None:
        await asyncio.sleep(1.0)
        self.write("late")


class Hangup(RequestHandler):
    def get(self) -> None:
        self.request.connection.stream.close()


def serve(scenario, **server_options):
    """Run ``scenario(connection, server)`` on a fresh event loop with the server on an unused port."""

    async def main():
        sock, port = bind_unused_port()
        app = Application([("/echo", Echo), ("/chunked", Chunked), ("/slow", Slow), ("/hangup", Hangup)])
        server = CountingServer(app, **server_options)
        server.add_sockets([sock])
        connection = LoadConnection("127.0.0.1", port, timeout=5.0)
        try:
            return await asyncio.wait_for(scenario(connection, server), timeout=20)
        finally:
            connection.close()
            server.stop()

    return asyncio.run(main())


def test_requests_share_one_keep_alive_connection():
    async def scenario(conn, server):
        answers = [await conn.request("POST", "/echo", str(i).encode(), {"Content-Type": "application/json"})
                   for i in range(5)]
        answers.append(await conn.request("GET", "/echo"))
        return answers, server.connections, conn.connects

    answers, accepted, connects = serve(scenario)
    assert answers == [(200, b'{"echo": %d}' % i) for i in range(5)] + [(200, b"plain")]
    assert accepted == connects == 1


def test_chunked_body_is_reassembled_and_the_connection_kept():
    async def scenario(conn, server):
        return [await conn.request("GET", "/chunked") for _ in range(3)], server.connections

    answers, accepted = serve(scenario)
    assert answers == [(200, b"first-second")] * 3
    assert accepted == 1


def test_reconnects_after_the_server_closed_an_idle_connection():
    async def scenario(conn, server):
        first = await conn.request("GET", "/echo")
        await asyncio.sleep(0.5)  # past the server's idle timeout: it hangs up
        second = await conn.request("GET", "/echo")
        return first, second, server.connections

    first, second, accepted = serve(scenario, idle_connection_timeout=0.1)
    assert first == second == (200, b"plain")
    assert accepted == 2


def test_connection_lost_mid_request_names_the_peer_and_recovers():
    async def scenario(conn, server):
        with pytest.raises(RequestFailed, match=rf"127\.0\.0\.1:{conn.port}: connection closed by the server before the answer"):
            await conn.request("GET", "/hangup")
        return await conn.request("GET", "/echo")

    assert serve(scenario) == (200, b"plain")


def test_timeout_names_the_peer_and_the_next_request_uses_a_fresh_connection():
    async def scenario(conn, server):
        conn.timeout = 0.2
        with pytest.raises(RequestTimeout, match=rf"127\.0\.0\.1:{conn.port}: no answer to GET /slow within 0.2 s"):
            await conn.request("GET", "/slow")
        conn.timeout = 5.0
        return await conn.request("GET", "/echo"), server.connections

    answer, accepted = serve(scenario)
    assert answer == (200, b"plain")
    assert accepted == 2


def test_refused_connection_is_a_request_error():
    async def scenario():
        sock, port = bind_unused_port()
        sock.close()  # nothing listens there any more
        with pytest.raises(RequestFailed, match=rf"127\.0\.0\.1:{port}: cannot connect"):
            await LoadConnection("127.0.0.1", port, timeout=2).request("GET", "/")

    asyncio.run(scenario())


def test_close_while_connecting_leaves_no_connection_behind():
    async def scenario(conn, server):
        request = asyncio.ensure_future(conn.request("GET", "/echo"))
        await asyncio.sleep(0)  # the request has started to connect
        conn.close()
        with pytest.raises(RequestFailed, match="closed before the request was sent"):
            await request
        return conn._reader

    assert serve(scenario) is None  # the connection made meanwhile was dropped, not kept for later
