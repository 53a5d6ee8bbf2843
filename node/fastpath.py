"""The two requests every write turns into, served without Tornado's RequestHandler.

``POST /write`` on the leader and ``POST /replicate`` on a follower are the whole replication
path: at a few thousand writes per second, the general-purpose ``RequestHandler`` machinery
(per-request object set-up, default headers, flush/finish bookkeeping) costs more than the
work itself. :class:`NodeServer` sits between the HTTP server (``node.httpserver``) and
the ``Application``: it answers these two with lean message delegates and passes every other
request, untouched, to the Application. Both paths share the same parsing, validation,
limits and error bodies (``node.handlers``), so a client cannot tell them apart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from tornado.httputil import (
    HTTPHeaders,
    HTTPMessageDelegate,
    HTTPServerConnectionDelegate,
    RequestStartLine,
    ResponseStartLine,
    responses,
)
from tornado.log import access_log
from tornado.web import Application

from node import codec, handlers
from node.follower import EntryConflict, ShuttingDown
from node.leader import WriteTimeout
from node.limits import MAX_JSON_DEPTH, REPLICATE_BODY_FACTOR, REPLICATE_JSON_DEPTH
from node.replication import SECRET_HEADER
from node.validation import ApiError, BoundedBody, body_too_large_message

log = logging.getLogger(__name__)


class NodeServer(HTTPServerConnectionDelegate):
    """Routes each request: the hot pair to lean delegates, everything else to ``app``."""

    def __init__(self, app: Application, node) -> None:
        self.app = app
        self.node = node

    def start_request(self, server_conn: object, request_conn) -> HTTPMessageDelegate:
        return _Dispatch(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)

    def lean_delegate(self, start_line: RequestStartLine, request_conn) -> HTTPMessageDelegate | None:
        if start_line.method != "POST":
            return None
        path = start_line.path.partition("?")[0]
        if path == "/write" and self.node.role == "leader":
            return WriteRequest(self.node, request_conn, start_line)
        if path == "/replicate" and self.node.role == "follower":
            return ReplicateRequest(self.node, request_conn, start_line)
        return None


class _Dispatch(HTTPMessageDelegate):
    """Decides once the request line is known; forwards every event to the chosen delegate."""

    __slots__ = ("server", "server_conn", "request_conn", "target")

    def __init__(self, server: NodeServer, server_conn: object, request_conn) -> None:
        self.server, self.server_conn, self.request_conn = server, server_conn, request_conn
        self.target: HTTPMessageDelegate | None = None

    def headers_received(self, start_line, headers):
        self.target = self.server.lean_delegate(start_line, self.request_conn)
        if self.target is None:
            self.target = self.server.app.start_request(self.server_conn, self.request_conn)
        return self.target.headers_received(start_line, headers)

    def data_received(self, chunk: bytes):
        return self.target.data_received(chunk)

    def finish(self) -> None:
        self.target.finish()

    def on_connection_close(self) -> None:
        if self.target is not None:
            self.target.on_connection_close()


class JsonRequest(HTTPMessageDelegate):
    """Collects a bounded JSON body, calls :meth:`handle`, writes a JSON answer."""

    max_depth = MAX_JSON_DEPTH

    def __init__(self, node, request_conn, start_line: RequestStartLine) -> None:
        self.node = node
        self.conn = request_conn
        self.start_line = start_line
        self.started = time.monotonic()
        self.headers: HTTPHeaders | None = None
        self.body: BoundedBody | None = None
        self.gone = False

    def body_limit(self) -> int:
        return self.node.config.max_body_bytes

    def headers_received(self, start_line, headers: HTTPHeaders) -> None:
        self.headers = headers
        limit = self.body_limit()
        self.body = BoundedBody(limit, headers.get("Content-Length", ""),
                                body_too_large_message(limit, self.node.config.max_body_bytes))

    def data_received(self, chunk: bytes) -> None:
        self.body.add(chunk)

    def json_body(self) -> Any:
        return self.body.json(self.max_depth)

    def finish(self) -> None:
        try:
            self.handle()
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON answer
            self.fail(exc)

    def handle(self) -> None:
        raise NotImplementedError

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, ApiError):
            self.respond(exc.status_code, {"error": exc.message, **exc.fields})
        else:
            log.error("%s %s failed", self.start_line.method, self.start_line.path, exc_info=exc)
            self.respond(500, {"error": "internal error; see the node's log"})

    def respond(self, status: int, payload: Any) -> None:
        if self.gone:
            return
        body = codec.dumps(payload)
        headers = HTTPHeaders({"Content-Type": "application/json; charset=UTF-8", "Content-Length": str(len(body))})
        self.conn.write_headers(ResponseStartLine("HTTP/1.1", status, responses.get(status, "Unknown")), headers, body)
        self.conn.finish()
        if status >= 400:  # what Tornado's access log would say (successes are not logged)
            log_method = access_log.warning if status < 500 else access_log.error
            log_method("%d %s %s (%s) %.2fms", status, self.start_line.method, self.start_line.path,
                       self.conn.context.remote_ip, 1000 * (time.monotonic() - self.started))

    def respond_when_done(self, future: asyncio.Future, answer) -> None:
        """Answer once ``future`` is done: ``answer(result)`` on success, an error otherwise."""

        def done(future: asyncio.Future) -> None:
            if future.cancelled():
                self.fail(RuntimeError("cancelled"))
            elif future.exception() is not None:
                self.fail(future.exception())
            else:
                try:
                    self.respond(200, answer(future.result()))
                except Exception as exc:  # noqa: BLE001
                    self.fail(exc)

        future.add_done_callback(done)

    def on_connection_close(self) -> None:
        self.gone = True


class WriteRequest(JsonRequest):
    """POST /write on the leader: numbered, logged and replicated at once, answered at quorum."""

    def handle(self) -> None:
        key, value = handlers.parse_write(self.json_body())
        written = self.node.begin("set", key, value)
        self.respond_when_done(written, lambda outcome: handlers.write_answer(self.node, "set", key, value, outcome))

    def fail(self, exc: BaseException) -> None:
        super().fail(handlers.timeout_error(exc) if isinstance(exc, WriteTimeout) else exc)


class ReplicateRequest(JsonRequest):
    """POST /replicate on a follower: entries stored and confirmed once durable."""

    max_depth = REPLICATE_JSON_DEPTH

    def body_limit(self) -> int:
        return REPLICATE_BODY_FACTOR * self.node.config.max_body_bytes + 4096

    def handle(self) -> None:
        handlers.check_secret(self.node, self.headers.get(SECRET_HEADER, ""))
        entries, single = handlers.parse_entries(self.json_body())
        try:
            stored = self.node.accept(entries)
        except EntryConflict as exc:
            log.error("%s", exc)
            raise ApiError(409, str(exc)) from None
        except ShuttingDown as exc:
            raise ApiError(503, str(exc)) from None
        self.respond_when_done(stored, lambda _: handlers.replicate_answer(self.node, entries, single))
