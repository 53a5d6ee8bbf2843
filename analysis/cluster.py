"""Control of the cluster under study (local processes or Docker Compose) and HTTP helpers.

Both cluster kinds offer the same three operations, so the study does not care which it runs
against: ``configure(k)`` restarts the node that leads with ``WRITE_QUORUM=k`` (and the delay
range), ``log_paths(workdir)`` returns a readable copy or location of each node's replication
log, and ``close()`` leaves things as they should be after the study. Which node leads is not
assumed: ``find_leader`` asks ``node.client`` (after a promotion it is not ``leader``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.iostream import StreamClosedError

from analysis import FOLLOWER_COUNT, NODE_NAMES
from node.client import Client, ClientError, Leader
from node.client_transport import normalize_address

LOG_FILE_NAME = "replication.log"
LEADER_TIMEOUT_S = 10.0  # the nodes answer /health once started; a leader is named at once


class NoLeader(RuntimeError):
    """``node.client`` found no leader among the nodes, or one that is none of them."""


@dataclass(frozen=True)
class Endpoints:
    """Base URL of every node by node id (``leader``, ``follower1``.. ``5``: the Compose service
    names), and the id of the node that leads; the others are its followers, in that order.

        ep = make_endpoints("http://127.0.0.1", 8000).led_by("follower2")
        ep.leader, ep.follower_ids     # "http://127.0.0.1:8002", ("leader", "follower1", "follower3", ...)
    """

    by_name: dict[str, str]
    leader_id: str = "leader"

    @property
    def leader(self) -> str:
        return self.by_name[self.leader_id]

    @property
    def follower_ids(self) -> tuple[str, ...]:
        return tuple(name for name in self.by_name if name != self.leader_id)

    @property
    def followers(self) -> tuple[str, ...]:
        return tuple(self.by_name[name] for name in self.follower_ids)

    def led_by(self, leader_id: str) -> Endpoints:
        if leader_id not in self.by_name:
            raise RuntimeError(f"{leader_id!r} is not one of the nodes {', '.join(self.by_name)}")
        return replace(self, leader_id=leader_id)


def make_endpoints(base_url: str, base_port: int, followers: int = FOLLOWER_COUNT) -> Endpoints:
    """The layout both clusters share: ``leader`` on ``base_port``, follower i on ``base_port + i``."""
    base = base_url.rstrip("/")
    return Endpoints({name: f"{base}:{base_port + i}" for i, name in enumerate(NODE_NAMES[:followers + 1])})


async def find_leader(endpoints: Endpoints, client: Client | None = None,
                      timeout: float = LEADER_TIMEOUT_S) -> Endpoints:
    """The same nodes, led by the node ``node.client`` finds leading now (``Client.leader()``,
    asked of every node). Pass the client that will send the writes, so that it starts with
    the leader known; NoLeader if none is found within ``timeout`` or the one found is none of
    these nodes."""
    own = client is None
    client = client or Client(list(endpoints.by_name.values()), timeout=timeout)
    try:
        found = await client.leader(timeout=timeout)
    except ClientError as exc:
        raise NoLeader(f"{exc} within {timeout:g} s") from None
    finally:
        if own:
            client.close()
    return endpoints.led_by(leader_name(endpoints, found))


def leader_name(endpoints: Endpoints, found: Leader) -> str:
    """The node id of the leader ``node.client`` found: its own node_id, else the node at its address."""
    if found.node_id in endpoints.by_name:
        return found.node_id
    for name, url in endpoints.by_name.items():
        if normalize_address(url) == found.address:
            return name
    raise NoLeader(f"node.client found the leader {found.node_id or '(no node_id)'} at {found.address}, "
                       f"which is none of the nodes {', '.join(f'{n} {u}' for n, u in endpoints.by_name.items())}")


# --- HTTP -------------------------------------------------------------------------------------


def make_client(max_clients: int) -> AsyncHTTPClient:
    """A private client whose connection limit is above the study's concurrency.

    Tornado's shared client allows 10 requests at once and queues the rest; a queued write
    would count its wait in the queue as write latency.
    """
    return AsyncHTTPClient(force_instance=True, max_clients=max_clients)


async def request_json(client: AsyncHTTPClient, url: str, method: str = "GET",
                       body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    """One request; returns (HTTP status, decoded JSON or None). Status 599 = no HTTP answer."""
    payload = None if body is None else json.dumps(body)
    headers = {"Content-Type": "application/json"} if payload is not None else None
    try:
        response = await client.fetch(url, method=method, body=payload, headers=headers,
                                      request_timeout=timeout, connect_timeout=timeout,
                                      raise_error=False, allow_nonstandard_methods=True)
    except (OSError, HTTPClientError, StreamClosedError) as exc:  # refused, reset, timed out
        return 599, {"error": f"{type(exc).__name__}: {exc}"}
    try:
        return response.code, json.loads(response.body) if response.body else None
    except ValueError:
        return response.code, {"error": f"not JSON: {response.body[:200]!r}"}


async def get_json(client: AsyncHTTPClient, url: str, timeout: float = 30.0) -> Any:
    """GET that must succeed: the study cannot go on with a node that does not answer."""
    status, answer = await request_json(client, url, timeout=timeout)
    if status != 200:
        raise RuntimeError(f"GET {url} answered {status}: {answer}")
    return answer


def wait_healthy(url: str, timeout: float = 60.0, interval: float = 0.2) -> None:
    """Block until ``url/health`` answers 200 (a recreated container needs a few seconds)."""
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError as exc:
            last_error = str(exc)
        time.sleep(interval)
    raise RuntimeError(f"{url} not healthy after {timeout:.0f} s ({last_error})")


# --- clusters ---------------------------------------------------------------------------------


class Cluster(Protocol):
    endpoints: Endpoints
    description: str

    def configure(self, quorum: int) -> None: ...

    def log_paths(self, workdir: str) -> dict[str, str]: ...

    def close(self) -> None: ...


def node_settings(quorum: int, min_delay: int, max_delay: int, seed: int) -> dict[str, str]:
    """The leader settings that define one run of the study.

    Every quorum gets the same DELAY_SEED, so every quorum draws the same sequence of delays
    (common random numbers): differences between quorums then come from k, less from luck.
    """
    return {"WRITE_QUORUM": str(quorum), "MIN_DELAY": str(min_delay), "MAX_DELAY": str(max_delay),
            "DELAY_SEED": str(seed)}


class LocalCluster:
    """Six local processes from ``node.cluster``, restarted for every quorum.

    The data directory is kept across quorums: each quorum starts with a replicated clear, so
    the old entries stay in the logs but not in the state, and the numbering just goes on.
    """

    description = "local processes (node.cluster)"

    def __init__(self, data_dir: str, base_port: int, min_delay: int, max_delay: int, seed: int,
                 log_level: str = "ERROR") -> None:
        self.seed = seed
        self.data_dir = os.path.abspath(data_dir)
        self.base_port = base_port
        self.min_delay, self.max_delay = min_delay, max_delay
        self.log_level = log_level
        self.endpoints = make_endpoints("http://127.0.0.1", base_port)
        self.procs: list = []

    def configure(self, quorum: int) -> None:
        from node import cluster

        self.close()
        env = dict(os.environ, LOG_LEVEL=self.log_level, **node_settings(quorum, self.min_delay, self.max_delay, self.seed))
        self.procs = cluster.start(self.data_dir, self.base_port, env=env)

    def log_paths(self, workdir: str) -> dict[str, str]:
        """Local logs are read in place: the nodes only append, and nothing is written now."""
        return {name: os.path.join(self.data_dir, name, LOG_FILE_NAME) for name in NODE_NAMES}

    def close(self) -> None:
        from node import cluster

        if self.procs:
            cluster.stop(self.procs)
            self.procs = []


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


class ComposeCluster:
    """The Docker Compose cluster (``node.compose``): services ``leader``, ``follower1``..``5``.

    The quorum and delays reach the node that leads through the compose environment; only that
    node is recreated (its node id is its service name: after a promotion it is not the
    ``leader`` service), the others keep running and keep their data. The study checks the
    leader's /status afterwards and stops if the settings did not arrive.
    """

    def __init__(self, endpoints: Endpoints, min_delay: int, max_delay: int, seed: int,
                 project: str | None = None) -> None:
        from node.compose import Compose

        self.seed = seed
        self.endpoints = endpoints
        self.min_delay, self.max_delay = min_delay, max_delay
        ports = {name: _port(url) for name, url in endpoints.by_name.items()}
        self.compose = Compose(project, ports=ports)
        self.description = f"Docker Compose ({' '.join(self.compose.command)}, project {project or 'default'})"

    def configure(self, quorum: int) -> None:
        self.compose.up(*self.endpoints.by_name)  # starts only what is not running
        self.endpoints = asyncio.run(find_leader(self.endpoints))
        self.compose.up(self.endpoints.leader_id, env=node_settings(quorum, self.min_delay, self.max_delay, self.seed),
                        recreate=True)

    def log_paths(self, workdir: str) -> dict[str, str]:
        """Logs live in named volumes: copy each one out of its container."""
        os.makedirs(workdir, exist_ok=True)
        return {name: self.compose.copy_log(name, os.path.join(workdir, f"{name}.log"))
                for name in self.endpoints.by_name}

    def close(self) -> None:
        """The compose cluster stays up (with the last quorum) for whoever started it."""


def run_cli(main: Callable[[], object], without_compose: str) -> None:
    """Run a tool's ``main``: a failure ends with one line that names the cause, not a traceback.

    ``without_compose`` tells how to run the tool without Docker (e.g. "use --local").
    """
    from node.compose import ComposeError

    try:
        main()
    except ComposeError as exc:
        sys.exit(f"error: {exc}\nIs the cluster built and up? Run `make up` first, or {without_compose}.")
    except (RuntimeError, OSError) as exc:
        sys.exit(f"error: {exc}")
    except KeyboardInterrupt:
        sys.exit("interrupted")
