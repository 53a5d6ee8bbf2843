"""The machine's ceiling for the benchmark: one process that answers every request at once.

    python -m analysis.noop_server PORT

Same HTTP server as a node (Tornado's ``tornado.httpserver.HTTPServer``), same event loop
(uvloop when installed) and same keep-alive load client, but no log, no replication and no
state: the answer to any request is a fixed JSON body of a real write answer's size, written
by a bare ``HTTPMessageDelegate`` (no ``Application`` routing, no ``RequestHandler``), so what
is measured is the server's wire and the loop, the floor under every node's request.
``analysis.bench`` measures it in the same run as the cluster, so the cluster's throughput can
be read as a fraction of what one such process can serve on this machine at that moment, a
ratio that noisy, shared machines cannot blur.
"""

from __future__ import annotations

import asyncio
import sys

from tornado.httpserver import HTTPServer
from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPMessageDelegate,
    HTTPServerConnectionDelegate,
    ResponseStartLine,
)

ANSWER = (b'{"success":true,"op":"set","key":"bench-1","value":1,"seq":1,"confirmations":5,"quorum":5,'
          b'"message":"Replicated to 5/5 followers (quorum: 5)","debug":{"replication_delays_ms":'
          b'{"follower1:8000":0.0,"follower2:8000":0.0,"follower3:8000":0.0,"follower4:8000":0.0,"follower5:8000":0.0}}}')
HEADERS = {"Content-Type": "application/json; charset=UTF-8", "Content-Length": str(len(ANSWER))}


class _Answer(HTTPMessageDelegate):
    """Ignores the request's body and answers once it has been read whole."""

    def __init__(self, connection: HTTPConnection) -> None:
        self.connection = connection

    def finish(self) -> None:
        self.connection.write_headers(ResponseStartLine("HTTP/1.1", 200, "OK"), HTTPHeaders(HEADERS), ANSWER)
        self.connection.finish()


class NoopServer(HTTPServerConnectionDelegate):
    def start_request(self, server_conn: object, request_conn: HTTPConnection) -> HTTPMessageDelegate:
        return _Answer(request_conn)


async def serve(port: int) -> None:
    server = HTTPServer(NoopServer())
    server.listen(port, "127.0.0.1")
    await asyncio.Event().wait()


def event_loop_runner():
    """uvloop's runner when installed, as a node runs (its libuv loop costs less per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


if __name__ == "__main__":
    event_loop_runner()(serve(int(sys.argv[1])))
