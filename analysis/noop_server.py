"""The machine's ceiling for the benchmark: one process that answers every request at once.

    python -m analysis.noop_server PORT

Same HTTP server (``node.httpserver``), event loop and keep-alive client as a real node, but
no log, no replication and no state: the answer to ``POST /write`` is a fixed JSON body of a real
answer's size. ``analysis.bench`` measures it in the same run as the cluster, so the cluster's
throughput can be read as a fraction of what one such process can serve on this machine
at that moment, a ratio that noisy, shared machines cannot blur.
"""

from __future__ import annotations

import asyncio
import sys

from tornado.httputil import HTTPHeaders, HTTPMessageDelegate, HTTPServerConnectionDelegate, ResponseStartLine

from node.app import event_loop_runner
from node.httpserver import HTTPServer

ANSWER = (b'{"success":true,"op":"set","key":"bench-1","value":1,"seq":1,"confirmations":5,"quorum":5,'
          b'"message":"Replicated to 5/5 followers (quorum: 5)","debug":{"replication_delays_ms":'
          b'{"follower1:8000":0.0,"follower2:8000":0.0,"follower3:8000":0.0,"follower4:8000":0.0,"follower5:8000":0.0}}}')


class _Answer(HTTPMessageDelegate):
    def __init__(self, connection) -> None:
        self.connection = connection

    def finish(self) -> None:
        headers = HTTPHeaders({"Content-Type": "application/json; charset=UTF-8", "Content-Length": str(len(ANSWER))})
        self.connection.write_headers(ResponseStartLine("HTTP/1.1", 200, "OK"), headers, ANSWER)
        self.connection.finish()


class NoopServer(HTTPServerConnectionDelegate):
    def start_request(self, server_conn, request_conn) -> HTTPMessageDelegate:
        return _Answer(request_conn)


async def serve(port: int) -> None:
    await HTTPServer(NoopServer()).listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    event_loop_runner()(serve(int(sys.argv[1])))
