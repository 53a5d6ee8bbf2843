"""Start-up: configuration, log replay, one Tornado ``Application`` served by Tornado's
``HTTPServer`` on the IOLoop, clean shutdown.

    python -m node            # reads ROLE, NODE_ID, PORT, ... from the environment
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from tornado.httpserver import HTTPServer
from tornado.log import access_log
from tornado.web import Application

from node import handlers as h
from node.compaction import load_newest
from node.config import Config, ConfigError, load_config
from node.join import joining, with_peers_from_cluster
from node.leader import LeaderLogError
from node.limits import Limits
from node.log import LogCorruptError, LogFile
from node.replica import Replica
from node.snapshot import SnapshotError
from node.terms import TermFileError

log = logging.getLogger("node")

# Below Docker's default 10 s stop timeout, so a graceful stop never turns into a SIGKILL.
SHUTDOWN_GRACE_S = 5.0


def routes(node) -> list:
    """The same paths on both roles: a follower answers writes with an error naming the leader.

    Tornado tries the patterns in order, so the two paths every write takes come first.
    """
    args = {"node": node}
    return [
        (r"/write", h.WriteHandler, args),
        (r"/replicate", h.ReplicateHandler, args),
        (r"/health", h.HealthHandler, args),
        (r"/status", h.StatusHandler, args),
        (r"/read/(.+)", h.ReadHandler, args),
        (r"/keys", h.KeysHandler, args),
        (r"/all", h.AllHandler, args),
        (r"/delete/(.+)", h.DeleteHandler, args),
        (r"/clear", h.ClearHandler, args),
        (r"/log", h.LogHandler, args),
        (r"/snapshot", h.SnapshotHandler, args),
        (r"/admin/snapshot", h.TakeSnapshotHandler, args),
        (r"/admin/members", h.MembersHandler, args),
        (r"/admin/promote", h.PromoteHandler, args),
        (r"/admin/promise", h.PromiseHandler, args),
        (r"/admin/entries", h.EntriesHandler, args),
        (r"/admin/pause", h.PauseHandler, args),
        (r"/admin/resume", h.ResumeHandler, args),
        (r"/openapi.json", h.OpenApiHandler, args),
    ]


def make_app(node) -> Application:
    return Application(
        routes(node),
        default_handler_class=h.NotFoundHandler,
        default_handler_args={"node": node},
        log_function=log_request,
    )


def log_request(handler) -> None:
    """Tornado's access log line, built only when its level is enabled (Tornado's own builds the
    request summary for every request, logged or not; successes are below WARNING here)."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if access_log.isEnabledFor(level):
        request = handler.request
        access_log.log(level, "%d %s %s (%s) %.2fms", status, request.method, request.uri,
                       request.remote_ip, 1000.0 * request.request_time())


def open_node(config: Config):
    """Load the newest valid snapshot, open the log, replay what follows the snapshot and build
    the role's object (raises on a damaged log, or when no snapshot it needs reads back)."""
    found = load_newest(config.data_dir)
    # What the snapshot holds stays in the log (the fallback) but not in memory, except what a
    # leader keeps for lagging followers.
    keep_from = max(1, found.seq + 1 - config.retain_entries) if found else 1
    log_file, entries = LogFile.open(config.data_dir, config.fsync, keep_from)
    try:
        return Replica(config, Limits.from_config(config), log_file, entries, found)
    except Exception:
        log_file.close()
        raise


class CoordinatorUnreachable(Exception):
    """ETCD_ENDPOINTS is set but no endpoint answers at start."""


async def attach_coordinator(node) -> None:
    """With ``ETCD_ENDPOINTS``, the node's failover coordinator; etcd must answer at start (a
    typo in the endpoints would otherwise surface only at the first failover)."""
    from node.etcd import EtcdClient, EtcdError
    from node.failover import Coordinator

    config = node.config
    etcd = EtcdClient(list(config.etcd_endpoints))
    try:
        await etcd.get(f"{config.etcd_prefix}/leader")
    except EtcdError as exc:
        etcd.close()
        raise CoordinatorUnreachable(f"ETCD_ENDPOINTS={','.join(config.etcd_endpoints)}: {exc}; check the "
                                     f"addresses, or unset ETCD_ENDPOINTS for manual failover") from None
    node.coordinator = Coordinator(node, etcd)


async def start_node(config: Config, sockets=None) -> tuple[object, HTTPServer]:
    """Open, serve and start a node on the running loop (used by ``main`` and by tests)."""
    node = open_node(config)
    if config.etcd_endpoints:
        try:
            await attach_coordinator(node)
        except BaseException:
            await node.close()
            raise
    await node.check_terms_first()
    # Headroom above every route's own limit, so an oversized body reaches its handler and gets
    # a JSON 413 (the handlers stream and count; nothing is buffered past the route's limit).
    server = HTTPServer(make_app(node), max_body_size=node.limits.server_body_bytes)
    if sockets is not None:
        server.add_sockets(sockets)
    else:
        server.listen(config.port, config.host)
    node.start()
    return node, server


async def stop_node(node, server: HTTPServer, grace: float = SHUTDOWN_GRACE_S) -> None:
    """Stop accepting, let requests in progress finish (bounded), then close the log."""
    server.stop()
    await node.drain(grace)
    await server.close_all_connections()
    await node.close()


class NodeIdFilter(logging.Filter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.node_id = self.node_id
        return True


def setup_logging(config: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(NodeIdFilter(config.node_id))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(node_id)s] %(name)s: %(message)s"))
    logging.basicConfig(level=config.log_level, handlers=[handler], force=True)
    logging.getLogger("tornado.access").setLevel(logging.WARNING)


async def serve(config: Config) -> None:
    node, server = await start_node(config)
    log.info("%s listening on %s:%d, data in %s (fsync=%s)", config.role, config.host, config.port,
             config.data_dir, config.fsync)
    log.info("term %d, %s; peers %s, WRITE_QUORUM=%d, delay %d..%d ms, WRITE_TIMEOUT=%d ms, BATCH_LINGER_US=%d",
             node.state.term, f"leader {node.state.leader_id}" if node.state.leader_id else "no leader known yet",
             ",".join(f"{i}={a}" for i, a in config.peers), config.write_quorum, config.min_delay_ms,
             config.max_delay_ms, config.write_timeout_ms, config.batch_linger_us)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down")
    await stop_node(node, server)


def event_loop_runner():
    """uvloop's event loop when installed (a libuv loop: cheaper I/O and timers per request),
    else asyncio's own. Tornado runs on either."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def main() -> None:
    try:
        config = load_config(with_peers_from_cluster(os.environ) if joining(os.environ) else None)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging(config)
    try:
        event_loop_runner()(serve(config))
    except (LogCorruptError, LeaderLogError, TermFileError, SnapshotError, CoordinatorUnreachable, OSError) as exc:
        log.error("cannot start: %s", exc)
        sys.exit(1)
