"""Control of the cluster under study (local processes or Docker Compose) and HTTP helpers.

Both cluster kinds offer the same three operations, so the study does not care which it runs
against: ``configure(k)`` restarts the leader with ``WRITE_QUORUM=k`` (and the delay range),
``log_paths(workdir)`` returns a readable copy or location of each node's replication log, and
``close()`` leaves things as they should be after the study.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol

from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.iostream import StreamClosedError

from analysis import FOLLOWER_COUNT, NODE_NAMES

CONTAINER_LOG_PATH = "/data/replication.log"
LOG_FILE_NAME = "replication.log"


@dataclass(frozen=True)
class Endpoints:
    """Base URLs of the leader and the followers, in follower order (follower1 first)."""

    leader: str
    followers: tuple[str, ...]

    @property
    def by_name(self) -> dict[str, str]:
        return dict(zip(NODE_NAMES, (self.leader,) + self.followers))


def make_endpoints(base_url: str, base_port: int, followers: int = FOLLOWER_COUNT) -> Endpoints:
    """The layout both clusters share: leader on ``base_port``, follower i on ``base_port + i``."""
    base = base_url.rstrip("/")
    return Endpoints(f"{base}:{base_port}", tuple(f"{base}:{base_port + i}" for i in range(1, followers + 1)))


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


def node_settings(quorum: int, min_delay: int, max_delay: int) -> dict[str, str]:
    """The leader settings that define one run of the study."""
    return {"WRITE_QUORUM": str(quorum), "MIN_DELAY": str(min_delay), "MAX_DELAY": str(max_delay)}


class LocalCluster:
    """Six local processes from ``node.cluster``, restarted for every quorum.

    The data directory is kept across quorums: each quorum starts with a replicated clear, so
    the old entries stay in the logs but not in the state, and the numbering just goes on.
    """

    description = "local processes (node.cluster)"

    def __init__(self, data_dir: str, base_port: int, min_delay: int, max_delay: int,
                 log_level: str = "ERROR") -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.base_port = base_port
        self.min_delay, self.max_delay = min_delay, max_delay
        self.log_level = log_level
        self.endpoints = make_endpoints("http://127.0.0.1", base_port)
        self.procs: list = []

    def configure(self, quorum: int) -> None:
        from node import cluster

        self.close()
        env = dict(os.environ, LOG_LEVEL=self.log_level, **node_settings(quorum, self.min_delay, self.max_delay))
        self.procs = cluster.start(self.data_dir, self.base_port, env=env)

    def log_paths(self, workdir: str) -> dict[str, str]:
        """Local logs are read in place: the nodes only append, and nothing is written now."""
        return {name: os.path.join(self.data_dir, name, LOG_FILE_NAME) for name in NODE_NAMES}

    def close(self) -> None:
        from node import cluster

        if self.procs:
            cluster.stop(self.procs)
            self.procs = []


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1]


def detect_compose_command() -> list[str]:
    """``docker compose`` (plugin) when it works, else the ``docker-compose`` program."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise RuntimeError("neither `docker compose` nor `docker-compose` is available; "
                       "install one or use --local")


def compose_base(command: list[str], project: str | None, files: list[str]) -> list[str]:
    """The compose command with the options that select the project and its files."""
    args = list(command)
    for path in files:
        args += ["-f", path]
    if project:
        args += ["-p", project]
    return args


def recreate_leader_command(base: list[str]) -> list[str]:
    """Only the leader is recreated: followers keep running and keep their data."""
    return base + ["up", "-d", "--no-deps", "--force-recreate", "leader"]


class ComposeCluster:
    """The Docker Compose cluster: services ``leader`` and ``follower1``..``follower5``.

    The quorum and delays reach the leader through the compose environment, so the compose
    file must pass ``WRITE_QUORUM``, ``MIN_DELAY`` and ``MAX_DELAY`` to the leader service; the
    study checks the leader's /status afterwards and stops if they did not arrive.
    """

    description = "Docker Compose"

    def __init__(self, endpoints: Endpoints, min_delay: int, max_delay: int,
                 command: str | None = None, project: str | None = None, files: list[str] | None = None,
                 docker: str = "docker", container_log_path: str = CONTAINER_LOG_PATH) -> None:
        self.endpoints = endpoints
        self.min_delay, self.max_delay = min_delay, max_delay
        self.base = compose_base(shlex.split(command) if command else detect_compose_command(),
                                 project, files or [])
        self.docker = shlex.split(docker)
        self.container_log_path = container_log_path
        self.description = f"Docker Compose ({' '.join(self.base)})"

    def _run(self, args: list[str], env: dict[str, str] | None = None) -> str:
        result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def compose_env(self, quorum: int) -> dict[str, str]:
        """The run's settings, plus the host ports the study polls, for the compose file to use."""
        ports = {"LEADER_PORT": _port(self.endpoints.leader)}
        ports.update({f"FOLLOWER{i}_PORT": _port(url) for i, url in enumerate(self.endpoints.followers, start=1)})
        return dict(os.environ, **node_settings(quorum, self.min_delay, self.max_delay), **ports)

    def configure(self, quorum: int) -> None:
        env = self.compose_env(quorum)
        followers = [f"follower{i}" for i in range(1, len(self.endpoints.followers) + 1)]
        self._run(self.base + ["up", "-d", "--no-recreate"] + followers, env)
        self._run(recreate_leader_command(self.base), env)
        for url in (self.endpoints.leader,) + self.endpoints.followers:
            wait_healthy(url)

    def container_id(self, service: str) -> str:
        ids = self._run(self.base + ["ps", "-q", service]).split()
        if len(ids) != 1:
            raise RuntimeError(f"expected one container for service {service}, found {ids}")
        return ids[0]

    def log_paths(self, workdir: str) -> dict[str, str]:
        """Logs live in named volumes: copy each one out of its container."""
        os.makedirs(workdir, exist_ok=True)
        paths = {}
        for name in NODE_NAMES[: 1 + len(self.endpoints.followers)]:
            target = os.path.join(workdir, f"{name}.log")
            self._run(self.docker + ["cp", f"{self.container_id(name)}:{self.container_log_path}", target])
            paths[name] = target
        return paths

    def close(self) -> None:
        """The compose cluster stays up (with the last quorum) for whoever started it."""
