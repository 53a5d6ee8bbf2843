"""Redis as the benchmark's yardstick: one master and five replicas as local processes.

The write path this store is compared with is Redis's ``SET`` followed by ``WAIT k``: the
answer to ``WAIT`` comes once k replicas acknowledged the write, which is this store's
``WRITE_QUORUM=k``. The benchmark drives both with the same closed loop of clients on the same
machine in the same run, so the ratio holds however fast the machine is that minute.

Two durability settings, because they are different promises:

* ``none``, Redis's default: no append-only file. A replica acknowledges what it has
  received; nothing is synced anywhere, so a power cut loses acknowledged writes.
* ``fsync``: ``appendonly yes`` and ``appendfsync always`` on all six. Each event-loop turn,
  a node writes and fsyncs its append-only file before it sends any reply, its replication
  acknowledgements included. That is the promise of this store's default ``FSYNC=batch``:
  nothing is confirmed before it is on disk.

Needs ``redis-server`` on PATH (Debian: ``apt-get install redis-server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Iterator

DURABILITY = {
    "none": ["--appendonly", "no"],
    "fsync": ["--appendonly", "yes", "--appendfsync", "always"],
}
REPLICAS = 5
START_TIMEOUT_S = 15.0


class RedisMissing(RuntimeError):
    """No redis-server to start."""


def yardstick_binary(name: str, option: str, package: str, missing: type[RuntimeError]) -> str:
    """The path of a yardstick's program, or ``missing`` with the one line that says how to get it."""
    path = shutil.which(name)
    if path is None:
        raise missing(f"{option} needs {name} on PATH: install it (Debian/Ubuntu: apt-get install {package}; "
                      f"the system service can stay stopped) or drop {option}")
    return path


def redis_server() -> str:
    return yardstick_binary("redis-server", "--redis", "redis-server", RedisMissing)


def free_ports(count: int) -> list[int]:
    """``count`` ports that were free a moment ago (the kernel's choice, so no clash with a cluster)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def info(port: int, section: str) -> dict[str, str]:
    """``INFO section`` of the server on ``port``, as a dict; empty while it does not answer."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"INFO %s\r\n" % section.encode())
        data = b""
        while not data.endswith(b"\r\n") or data.count(b"\r\n") < 2:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        lines = data.decode(errors="replace").split("\r\n")[1:]
        return dict(line.split(":", 1) for line in lines if ":" in line)
    return {}


@contextlib.contextmanager
def redis_cluster(durability: str) -> Iterator[tuple[int, dict[str, int]]]:
    """Master and replicas in a temporary directory; yields the master's port and the pid of
    each process under the cluster's node names (leader, follower1..5)."""
    server = redis_server()
    ports = free_ports(REPLICAS + 1)
    workdir = tempfile.mkdtemp(prefix="kv-redis-")
    procs: list[subprocess.Popen] = []
    try:
        for i, port in enumerate(ports):
            data_dir = os.path.join(workdir, str(i))
            os.makedirs(data_dir)
            argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", data_dir, "--save", "",
                    "--daemonize", "no", "--logfile", os.path.join(data_dir, "redis.log"), *DURABILITY[durability]]
            if i:
                argv += ["--replicaof", "127.0.0.1", str(ports[0])]
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_replicated(ports, procs)
        names = ["leader"] + [f"follower{i}" for i in range(1, REPLICAS + 1)]
        yield ports[0], {name: proc.pid for name, proc in zip(names, procs)}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def wait_replicated(ports: list[int], procs: list[subprocess.Popen]) -> None:
    """Until the master counts every replica connected and each replica's link is up."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        exited = [proc.args[2] for proc in procs if proc.poll() is not None]
        if exited:
            raise RuntimeError(f"redis-server on port(s) {', '.join(exited)} exited at start")
        master = info(ports[0], "replication")
        links = [info(port, "replication").get("master_link_status") for port in ports[1:]]
        if master.get("connected_slaves") == str(REPLICAS) and all(link == "up" for link in links):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis replicas not in sync after {START_TIMEOUT_S:g} s: master sees "
                               f"{master.get('connected_slaves')} replicas, links {links}")
        time.sleep(0.05)


class RespConnection(asyncio.Protocol):
    """One client connection speaking just enough RESP for ``SET`` + ``WAIT`` (single-line replies)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiting: deque[asyncio.Future] = deque()

    @classmethod
    async def open(cls, host: str, port: int) -> RespConnection:
        _, conn = await asyncio.get_running_loop().create_connection(cls, host, port)
        return conn

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.waiting:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
            self.waiting.popleft().set_result(line)

    def connection_lost(self, exc: Exception | None) -> None:
        while self.waiting:
            self.waiting.popleft().set_exception(ConnectionError(f"Redis closed the connection: {exc}"))

    async def set_and_wait(self, key: bytes, value: bytes, replicas: int, timeout_ms: int) -> str | None:
        """One write acknowledged by ``replicas`` replicas; None, or what went wrong."""
        loop = asyncio.get_running_loop()
        replies = [loop.create_future(), loop.create_future()]
        self.waiting.extend(replies)
        wait_args = (b"%d" % replicas, b"%d" % timeout_ms)
        self.transport.write(command(b"SET", key, value) + command(b"WAIT", *wait_args))
        stored, acked = await asyncio.gather(*replies)
        if stored != b"+OK":
            return f"SET answered {stored[:200]!r}"
        if not acked.startswith(b":") or int(acked[1:]) < replicas:
            return f"WAIT {replicas} answered {acked[:200]!r} (fewer replicas within {timeout_ms} ms)"
        return None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)
