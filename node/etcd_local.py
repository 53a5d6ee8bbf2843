"""etcd as local processes: one member (or N) on free loopback ports, for the local cluster and tests.

    with start_etcd() as etcd:             # one member, fresh data directory
        client = EtcdClient(etcd.endpoints)

Each start gets fresh ports, a fresh temporary directory (a data directory and a log per
member), a static ``--initial-cluster`` and a new cluster token, and returns once every member
names the same Raft leader and that leader answers ``/health`` (within ``timeout``; a member
that exits first is reported with the end of its log). :meth:`LocalEtcd.stop` sends SIGTERM,
followers first, SIGKILL to whoever is left after ``STOP_TIMEOUT_S``, and removes the directory.
The benchmark's six-member yardstick (``analysis.etcdref``) starts its members here too.
Needs ``etcd`` on PATH (Debian: ``apt-get install etcd-server``); :func:`etcd_binary` is None
without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# Ports are free when chosen and taken by etcd a moment later; another process may win the race.
START_ATTEMPTS = 3
HOST = "127.0.0.1"

log = logging.getLogger(__name__)


def etcd_binary() -> str | None:
    return shutil.which("etcd")


def free_ports(count: int) -> list[int]:
    """``count`` ports that were free a moment ago (the kernel's choice, so no clash with a cluster)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class LocalEtcd:
    """Running members; ``leader`` is the index of the Raft leader found at start."""

    workdir: str
    names: list[str]
    client_ports: list[int]
    procs: list[subprocess.Popen] = field(default_factory=list)
    leader: int | None = None

    @property
    def endpoints(self) -> list[str]:
        return [f"http://{HOST}:{port}" for port in self.client_ports]

    def stop(self) -> None:
        """SIGTERM to the followers, then to the leader, SIGKILL to whoever is still there after the bound.

        Followers first because a leader that is told to stop hands its leadership to a live
        member first; stopped together with the others, the new leader tries the same with
        members that are going away and waits out etcd's request timeout (7 s). With its
        followers gone, the leader has no one to hand over to and exits at once.
        """
        leader = self.leader if self.leader is not None and self.leader < len(self.procs) else None
        order = [p for i, p in enumerate(self.procs) if i != leader] + ([self.procs[leader]] if leader is not None else [])
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for group in (order[:-1], order[-1:]):
            for proc in group:
                if proc.poll() is None:
                    proc.terminate()
            for proc in group:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("etcd member pid %d still running %g s after SIGTERM: killed", proc.pid, STOP_TIMEOUT_S)
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalEtcd:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_etcd(members: int = 1, binary: str | None = None, timeout: float = START_TIMEOUT_S,
               prefix: str = "kv-etcd-") -> LocalEtcd:
    """``members`` etcd processes forming one new cluster, ready (see the module docstring)."""
    binary = binary or etcd_binary()
    if binary is None:
        raise RuntimeError("etcd is not on PATH: install it (Debian/Ubuntu: apt-get install etcd-server)")
    for attempt in range(1, START_ATTEMPTS + 1):
        etcd = launch(binary, members, prefix)
        try:
            etcd.leader = wait_ready(etcd, timeout)
            return etcd
        except PortTaken:
            etcd.stop()
            if attempt == START_ATTEMPTS:
                raise
        except BaseException:
            etcd.stop()
            raise
    raise AssertionError("unreachable")


def launch(binary: str, members: int, prefix: str) -> LocalEtcd:
    ports = free_ports(2 * members)
    clients, peers = ports[:members], ports[members:]
    names = [f"m{i}" for i in range(members)]
    etcd = LocalEtcd(tempfile.mkdtemp(prefix=prefix), names, clients)
    initial = ",".join(f"{name}=http://{HOST}:{peer}" for name, peer in zip(names, peers))
    token = f"kv-{secrets.token_hex(4)}"
    for name, client, peer in zip(names, clients, peers):
        argv = member_argv(binary, name, etcd.workdir, client, peer, initial, token)
        etcd.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return etcd


def member_argv(binary: str, name: str, workdir: str, client: int, peer: int, initial: str, token: str) -> list[str]:
    return [binary, "--name", name, "--data-dir", os.path.join(workdir, name),
            "--listen-client-urls", f"http://{HOST}:{client}", "--advertise-client-urls", f"http://{HOST}:{client}",
            "--listen-peer-urls", f"http://{HOST}:{peer}", "--initial-advertise-peer-urls", f"http://{HOST}:{peer}",
            "--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token", token,
            "--logger", "zap", "--log-outputs", log_path(workdir, name), "--log-level", "warn"]


class PortTaken(RuntimeError):
    """A member could not bind its port: someone took it between choosing and starting."""


def wait_ready(etcd: LocalEtcd, timeout: float) -> int:
    """Until every member names the same leader and that leader answers /health; returns its index."""
    deadline = time.monotonic() + timeout
    while True:
        for i, proc in enumerate(etcd.procs):
            if proc.poll() is not None:
                last = last_log_line(etcd.workdir, etcd.names[i])
                error = PortTaken if "address already in use" in last else RuntimeError
                raise error(f"etcd member {etcd.names[i]} (client port {etcd.client_ports[i]}) exited at start "
                            f"with code {proc.returncode}; its log ends: {last}")
        statuses = [member_status(port) for port in etcd.client_ports]
        ids = [s.get("header", {}).get("member_id") for s in statuses]
        leaders = {s.get("leader") for s in statuses}
        if len(leaders) == 1 and None not in ids and (leader := leaders.pop()) in ids and leader != "0":
            index = ids.index(leader)
            if healthy(etcd.client_ports[index]):
                return index
        if time.monotonic() > deadline:
            raise RuntimeError(f"etcd not ready after {timeout:g} s: members answer {sum(1 for s in statuses if s)}/"
                               f"{len(statuses)}, leaders seen {sorted(map(str, leaders))}; logs in {etcd.workdir}")
        time.sleep(0.05)


def member_status(port: int) -> dict:
    """``/v3/maintenance/status`` of one member; empty while it does not answer."""
    request = urllib.request.Request(f"http://{HOST}:{port}/v3/maintenance/status", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return {}


def healthy(port: int) -> bool:
    """``/health`` serves a read through Raft: true once the member can answer clients."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as response:
            return json.loads(response.read()).get("health") == "true"
    except (OSError, ValueError):
        return False


def log_path(workdir: str, name: str) -> str:
    return os.path.join(workdir, f"{name}.log")


def last_log_line(workdir: str, name: str) -> str:
    with contextlib.suppress(OSError):
        with open(log_path(workdir, name), errors="replace") as f:
            lines = f.read().strip().splitlines()
        if lines:
            return lines[-1][:300]
    return "(empty log)"
