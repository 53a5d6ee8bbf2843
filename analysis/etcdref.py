"""etcd as the benchmark's yardstick: a six-member etcd 3.4 cluster as local processes.

This store at ``WRITE_QUORUM=3`` answers a write once the leader and three of its five
followers have it on disk: four of six copies synced. etcd (Raft) commits an entry once a
majority of its members, four of six, have appended it to their write-ahead log, and each
member fsyncs its WAL before it acknowledges (etcd 3.4 has no setting that skips it). So the
two promise the same durability, and ``analysis.bench --etcd`` compares them at equal clients
on the same machine in the same run.

The clients are the store's: the same closed loop, one keep-alive HTTP/1.1 connection per client
(``analysis.loadclient``), each write a ``POST /v3/kv/put`` to etcd's JSON gateway with
``{"key": base64(key), "value": base64(value)}``, key and value of the same sizes as the
store's writes. All writes go to the member that is Raft's leader when the cluster is ready
(found by ``POST /v3/maintenance/status`` on every member: its ``leader`` against the
``header.member_id`` of each). A follower would forward each proposal to the leader, one more
hop the store's writes do not take either, since they go to the store's leader. What is left is
etcd's own cost of the JSON API: the gateway inside the member turns each HTTP request into a
gRPC call to the same process, part of what an etcd JSON client pays.

Every run gets fresh ports and a fresh temporary data directory per member, a static
``--initial-cluster`` and a new cluster token; members are stopped with SIGTERM, followers
first (see :func:`stop`), SIGKILL after 10 s, and their directories removed. Needs ``etcd``
on PATH (Debian: ``apt-get install etcd-server``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator

from analysis.redisref import free_ports, yardstick_binary

MEMBERS = 6
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
NAMES = ["leader"] + [f"follower{i}" for i in range(1, MEMBERS)]


class EtcdMissing(RuntimeError):
    """No etcd to start."""


def etcd_binary() -> str:
    return yardstick_binary("etcd", "--etcd", "etcd-server", EtcdMissing)


def etcd_version() -> str:
    out = subprocess.run([etcd_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    return out.splitlines()[0].replace("etcd Version:", "etcd").strip() if out else "etcd (version unknown)"


def put_body(key: bytes, value: bytes) -> bytes:
    """The v3 JSON gateway's PutRequest: bytes fields travel base64-encoded."""
    return b'{"key":"%s","value":"%s"}' % (base64.b64encode(key), base64.b64encode(value))


def post_json(port: int, path: str, body: dict, timeout: float = 2.0) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def member_status(port: int) -> dict:
    """``/v3/maintenance/status`` of one member; empty while it does not answer."""
    try:
        return post_json(port, "/v3/maintenance/status", {})
    except (OSError, ValueError):
        return {}


def member_argv(binary: str, name: str, workdir: str, client: int, peer: int, initial: str, token: str) -> list[str]:
    return [binary, "--name", name, "--data-dir", os.path.join(workdir, name),
            "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token", token,
            "--logger", "zap", "--log-outputs", log_path(workdir, name), "--log-level", "warn"]


def log_path(workdir: str, name: str) -> str:
    return os.path.join(workdir, f"{name}.log")


def last_log_line(workdir: str, name: str) -> str:
    with contextlib.suppress(OSError):
        with open(log_path(workdir, name), errors="replace") as f:
            lines = f.read().strip().splitlines()
        if lines:
            return lines[-1][:300]
    return "(empty log)"


@contextlib.contextmanager
def etcd_cluster() -> Iterator[tuple[int, dict[str, int]]]:
    """Six members in a temporary directory; yields the client port of the Raft leader and the
    pid of each member under the store's node names (the Raft leader is ``leader``)."""
    binary = etcd_binary()
    ports = free_ports(2 * MEMBERS)
    clients, peers = ports[:MEMBERS], ports[MEMBERS:]
    workdir = tempfile.mkdtemp(prefix="kv-etcd-")
    members = [f"m{i}" for i in range(MEMBERS)]
    initial = ",".join(f"{m}=http://127.0.0.1:{p}" for m, p in zip(members, peers))
    token = f"kv-bench-{secrets.token_hex(4)}"
    procs: list[subprocess.Popen] = []
    leader = None
    try:
        for member, client, peer in zip(members, clients, peers):
            argv = member_argv(binary, member, workdir, client, peer, initial, token)
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        leader = wait_ready(clients, procs, workdir)
        order = [leader] + [i for i in range(MEMBERS) if i != leader]
        yield clients[leader], {name: procs[i].pid for name, i in zip(NAMES, order)}
    finally:
        stop(procs, leader)
        shutil.rmtree(workdir, ignore_errors=True)


def wait_ready(clients: list[int], procs: list[subprocess.Popen], workdir: str) -> int:
    """Until every member names the same leader and that leader accepts a put; returns its index."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        exited = [i for i, p in enumerate(procs) if p.poll() is not None]
        if exited:
            i = exited[0]
            raise RuntimeError(f"etcd member m{i} (client port {clients[i]}) exited at start with code "
                               f"{procs[i].returncode}; its log ends: {last_log_line(workdir, f'm{i}')}")
        statuses = [member_status(port) for port in clients]
        ids = [s.get("header", {}).get("member_id") for s in statuses]
        leaders = {s.get("leader") for s in statuses}
        if len(leaders) == 1 and None not in ids and (leader := leaders.pop()) in ids and leader != "0":
            index = ids.index(leader)
            with contextlib.suppress(OSError, ValueError):
                if "header" in post_json(clients[index], "/v3/kv/put", {"key": "cmVhZHk=", "value": "MQ=="}):
                    return index
        if time.monotonic() > deadline:
            raise RuntimeError(f"etcd cluster not ready after {START_TIMEOUT_S:g} s: members answer "
                               f"{sum(1 for s in statuses if s)}/{MEMBERS}, leaders seen {sorted(map(str, leaders))}")
        time.sleep(0.1)


def stop(procs: list[subprocess.Popen], leader: int | None) -> None:
    """SIGTERM to the followers, then to the leader, SIGKILL to whoever is still there after the bound.

    Followers first because a leader that is told to stop hands its leadership to a live
    member first; stopped together with the others, the new leader tries the same with
    members that are going away and waits out etcd's request timeout (7 s here). With its
    followers gone, the leader has no one to hand over to and exits at once.
    """
    order = [p for i, p in enumerate(procs) if i != leader] + ([procs[leader]] if leader is not None else [])
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for group in (order[:-1], order[-1:]):
        for proc in group:
            if proc.poll() is None:
                proc.terminate()
        for proc in group:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"etcd member pid {proc.pid} still running {STOP_TIMEOUT_S:g} s after SIGTERM: killed",
                      file=sys.stderr, flush=True)
                proc.kill()
                proc.wait()
