"""A leader and followers on one event loop, for fast integration tests.

    async with InProcessCluster(tmp_path, followers=5, WRITE_QUORUM="2") as cluster:
        answer = await cluster.request("leader", "POST", "/write", {"key": "k", "value": 1})
"""

from __future__ import annotations

import asyncio
import json
import time

from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

from node.app import start_node, stop_node
from node.config import load_config


class InProcessCluster:
    def __init__(self, tmp_path, followers: int = 5, **settings: str) -> None:
        self.tmp_path = tmp_path
        self.settings = {"MIN_DELAY": "0", "MAX_DELAY": "20", "CATCHUP_INTERVAL": "200",
                         "REPLICATION_SECRET": "in-process-secret", **settings}
        self.sockets = {}
        self.ports = {}
        for name in ["leader"] + [f"follower{i}" for i in range(1, followers + 1)]:
            sock, port = bind_unused_port()
            self.sockets[name], self.ports[name] = sock, port
        self.nodes = {}
        self.servers = {}
        self.client = AsyncHTTPClient(force_instance=True, max_clients=200)

    @property
    def follower_names(self) -> list[str]:
        return [name for name in self.ports if name != "leader"]

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def env(self, name: str) -> dict:
        peers = ",".join(f"{node}={self.address(node)}" for node in self.ports)
        return dict(self.settings, NODE_ID=name, DATA_DIR=str(self.tmp_path / name), PEERS=peers,
                    ROLE="leader" if name == "leader" else "follower")

    async def start(self, name: str) -> None:
        """Start (or restart) one node on its reserved port and data directory."""
        sock = self.sockets.get(name)
        if sock is None:
            sock, _ = bind_unused_port_at(self.ports[name])
        self.nodes[name], self.servers[name] = await start_node(load_config(self.env(name)), [sock])
        self.sockets[name] = None

    async def stop(self, name: str) -> None:
        await stop_node(self.nodes.pop(name), self.servers.pop(name))

    async def __aenter__(self) -> InProcessCluster:
        for name in self.follower_names + ["leader"]:
            await self.start(name)
        return self

    async def __aexit__(self, *exc) -> None:
        for name in list(self.nodes):
            await self.stop(name)
        self.client.close()

    async def request(self, name: str, method: str, path: str, body=None, raw: bytes | None = None):
        """Send one request; return (status, decoded JSON body)."""
        payload = raw if raw is not None else (None if body is None else json.dumps(body))
        if payload is None and method in ("POST", "PUT", "PATCH"):
            payload = b""
        response = await self.client.fetch(
            f"http://{self.address(name)}{path}", method=method, body=payload,
            raise_error=False, request_timeout=60, allow_nonstandard_methods=True,
        )
        return response.code, json.loads(response.body)

    async def write(self, key: str, value) -> dict:
        status, answer = await self.request("leader", "POST", "/write", {"key": key, "value": value})
        assert status == 200, answer
        return answer

    async def settled(self, timeout: float = 15.0) -> None:
        """Wait until every running follower applied everything the leader holds."""
        leader = self.nodes["leader"]
        deadline = time.monotonic() + timeout
        while True:
            lagging = [n for n in self.nodes if n != "leader" and self.nodes[n].store.applied_seq < leader.last_seq]
            if not lagging:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"followers {lagging} did not catch up to seq {leader.last_seq}")
            await asyncio.sleep(0.01)


async def wait_for(condition, timeout: float = 20.0) -> None:
    """Until ``condition()`` (a plain function) holds, checked every 10 ms on the loop."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def bind_unused_port_at(port: int):
    """Bind the given port again (after a node on it was stopped)."""
    from tornado.netutil import bind_sockets

    sock = bind_sockets(port, "127.0.0.1", reuse_port=False)[0]
    return sock, port
