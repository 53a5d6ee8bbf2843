"""Write throughput and per-write cost of the cluster: ``python -m analysis.bench --help``.

throughput (default): for each quorum k the leader runs with WRITE_QUORUM=k and no simulated
lag (MIN_DELAY=MAX_DELAY=0), and C clients send writes back to back, each on its own
keep-alive connection (``analysis.loadclient``), for a fixed time after a warm-up, for each C
of --clients. Per quorum and C: acknowledged writes per second, errors, latency, and the CPU
time one write costs the leader, the five followers and this client (utime+stime from
/proc/<pid>/stat), which tells where a write's time goes, and whether the client keeps up.

delays: the study's seeded workload (MIN_DELAY..MAX_DELAY, DELAY_SEED). A write cannot be
acknowledged before the k-th smallest of its drawn delays has passed, so for each acknowledged
write ``latency - k-th delay`` is the time spent on anything but the simulated lag.

Yardsticks (throughput mode), the same clients against another system on the same machine:

* --redis: one master and five replicas, ``SET`` + ``WAIT k`` per write, once without
  persistence (Redis's default) and once with ``appendfsync always`` (``analysis.redisref``).
* --etcd: six etcd 3.4 members, ``POST /v3/kv/put`` to the Raft leader's JSON gateway; a put
  is committed on 4 of 6 WAL-synced members, the durability of this store's k=3
  (``analysis.etcdref``).

Alternating runs (--before REV and/or --pairs N): this machine's speed drifts by 1.5x within an
hour, so two numbers measured minutes apart say little. In each of N rounds the nodes of
revision REV (``git archive`` into a temporary tree, run there as ``python -m node.cluster``),
the nodes of this tree (run the same way) and each yardstick run one after the other, each at
every C of --clients on a fresh cluster; the report gives per C each side's writes/s and
p50/p99, and per round the ratio of this tree to the before side and to each yardstick.

Six local processes by default (a fresh cluster in a temporary directory for every quorum);
--compose drives the Docker Compose cluster instead, recreating its leader per quorum.
Tables go to stdout, progress to stderr, CSV files to --output.

The leader is found with ``node.client`` before every run (``Client(all six).leader()``), not
assumed to be the first port: after a promotion on Compose another node leads, and its CPU is
the leader's column. Nodes of a revision whose /health names no leader (``--before`` an old
one) leave the client without an answer; after a short bound (LEADER_WAIT_S) the first node is
taken, as before. The load itself goes through ``analysis.loadclient`` (keep-alive, httptools,
no retries) so that the benchmark measures the store, not the client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from analysis import FOLLOWER_COUNT, NODE_NAMES, add_seeded_workload, check_workload
from analysis.cluster import (
    Cluster,
    ComposeCluster,
    Endpoints,
    LocalCluster,
    NoLeader,
    find_leader,
    make_endpoints,
    node_settings,
    run_cli,
)
from analysis.etcdref import etcd_binary, etcd_cluster, etcd_version, put_body
from analysis.loadclient import LoadConnection, RequestFailed
from analysis.redisref import DURABILITY, RespConnection, redis_cluster, redis_server
from analysis.workload import PlannedWrite, follower_names, kth_smallest, plan_writes

DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench")
JSON_HEADERS = {"Content-Type": "application/json"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# How long node.client may look for a leader before the first node is taken: a revision before
# the terms may name none; the current nodes name one in the first /health round.
LEADER_WAIT_S = 3.0


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analysis.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["throughput", "delays"], default="throughput",
                   help="what to measure (default: %(default)s)")
    p.add_argument("--quorums", type=int, nargs="+", metavar="K",
                   help="write quorums to measure (default: 1 2 3 4 5; with --before or --pairs: 3)")
    p.add_argument("--concurrency", type=int, default=10,
                   help="clients, each with one connection and one write in flight; in throughput mode "
                        "the default of --clients (default: %(default)s)")
    p.add_argument("--keys", type=int, default=10, help="distinct keys written (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s (default: %(default)s)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="directory of the CSV files (default: analysis/results/bench/)")
    t = p.add_argument_group("throughput mode")
    t.add_argument("--clients", type=int, nargs="+", metavar="C",
                   help="client counts to measure one after the other, e.g. 1 10 100 (default: --concurrency)")
    t.add_argument("--duration", type=float, default=5.0, help="measured window per quorum, s (default: %(default)s)")
    t.add_argument("--warmup", type=float, default=1.0, help="writes before the window, not counted, s (default: %(default)s)")
    t.add_argument("--max-writes", type=int, default=200000, help="cap on writes sent per loop (default: %(default)s)")
    t.add_argument("--single", action="store_true", help="also run one client alone at the highest quorum")
    t.add_argument("--no-baseline", action="store_true",
                   help="skip the no-op server measured first (the machine's ceiling in this run)")
    t.add_argument("--redis", action="store_true",
                   help="also measure Redis (redis-server on PATH), SET + WAIT k, without and with fsync")
    t.add_argument("--etcd", action="store_true",
                   help="also measure a six-member etcd 3.4 (etcd on PATH), the durability of k=3")
    t.add_argument("--before", metavar="REV",
                   help="also run the nodes of git revision REV, alternating with this tree's (see --pairs)")
    t.add_argument("--pairs", type=int, metavar="N",
                   help="rounds of alternating runs: (REV,) this tree, each yardstick (default with --before: 3)")
    d = p.add_argument_group("delays mode")
    add_seeded_workload(d, "the key choice and the leader's delay draws")
    n = p.add_argument_group("where the nodes are")
    n.add_argument("--compose", action="store_true", help="use the Docker Compose cluster instead of local processes")
    n.add_argument("-p", "--project-name", help="compose project name (default: the one `make up` uses)")
    n.add_argument("--published-port", action="store_true",
                   help="with --compose: connect through the published port (Docker's userland proxy) "
                        "instead of the leader container's address")
    n.add_argument("--base-url", default="http://127.0.0.1", help="scheme and host of all nodes (default: %(default)s)")
    n.add_argument("--base-port", type=int, default=8000, help="leader port; follower i on base+i (default: %(default)s)")
    n.add_argument("--node-log-level", default="ERROR", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="LOG_LEVEL of local nodes (default: %(default)s)")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse settings the nodes would refuse too, before a cluster is started for nothing."""
    alternating = args.before is not None or args.pairs is not None
    if args.quorums is None:
        args.quorums = [3] if alternating else list(range(1, FOLLOWER_COUNT + 1))
    args.clients = args.clients or [args.concurrency]
    if alternating and args.pairs is None:
        args.pairs = 3
    check_workload(parser, args, ("concurrency", "keys", "writes", "max_writes"))
    if min(args.clients) < 1:
        parser.error(f"--clients must all be >= 1, got {args.clients}")
    check_alternating(parser, args, alternating)
    if args.duration <= 0 or args.warmup < 0 or args.timeout <= 0:
        parser.error("need --duration > 0, --warmup >= 0 and --timeout > 0")
    if not args.compose and args.base_url != "http://127.0.0.1":
        parser.error("local nodes listen on 127.0.0.1; --base-url is for --compose")
    for option in ("redis", "etcd"):
        if getattr(args, option) and args.mode != "throughput":
            parser.error(f"--{option} is a throughput-mode yardstick; drop it or --mode delays")


def check_alternating(parser: argparse.ArgumentParser, args: argparse.Namespace, alternating: bool) -> None:
    """Alternating runs start both revisions as local processes, one quorum at a time."""
    if not alternating:
        return
    if args.mode != "throughput":
        parser.error("--before and --pairs compare throughput; drop them or --mode delays")
    if args.compose:
        parser.error("--before and --pairs run both revisions as local processes; drop --compose")
    if len(args.quorums) != 1:
        parser.error(f"--before and --pairs compare at one quorum, got --quorums {' '.join(map(str, args.quorums))}")
    if args.pairs < 1:
        parser.error(f"--pairs must be >= 1, got {args.pairs}")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- processes and their CPU time -------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """The process and its live descendants, so a node that forks workers is still counted whole."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` and its descendants; NaN when /proc cannot show it."""
    total = 0.0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as f:
                stat = f.read()
        except OSError:
            if member == pid:
                return math.nan
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # the name in parentheses may contain spaces
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def node_ids(candidates: list[int]) -> dict[str, int]:
    """Node name -> pid of the candidates that are nodes, read from each process's NODE_ID
    rather than trusting the start order."""
    pids = {}
    for pid in candidates:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
            if b"NODE_ID" in env:
                pids[env[b"NODE_ID"].decode()] = pid
    return pids


def local_pids(candidates: list[int]) -> dict[str, int]:
    """Node name -> pid of the six nodes, which must all be there."""
    pids = node_ids(candidates)
    if sorted(pids) != sorted(NODE_NAMES):
        raise RuntimeError(f"local cluster processes are {sorted(pids)}, expected {list(NODE_NAMES)}")
    return pids


def compose_pids(cluster: ComposeCluster) -> dict[str, int]:
    """Node name -> host pid of each container's main process, as Docker reports it."""
    pids = {}
    for name in NODE_NAMES:
        out = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", cluster.compose.container(name)],
                             capture_output=True, text=True, check=True).stdout
        pids[name] = int(out.strip())
    if any(math.isnan(cpu_seconds(pid)) for pid in pids.values()):
        progress("warning: container processes are not visible in this /proc (Docker in a VM?); CPU columns will be NaN")
    return pids


def sample_cpu(pids: dict[str, int]) -> dict[str, float]:
    sample = {name: cpu_seconds(pid) for name, pid in pids.items()}
    sample["client"] = time.process_time()
    return sample


# --- the cluster of one quorum ----------------------------------------------------------------


@contextlib.contextmanager
def quorum_cluster(args: argparse.Namespace, quorum: int, delays: tuple[int, int],
                   workdir: str) -> Iterator[tuple[Cluster, dict[str, int]]]:
    """The cluster running with this quorum and delay range, and the pid of each node."""
    if args.compose:
        endpoints = make_endpoints(args.base_url, args.base_port)
        cluster = ComposeCluster(endpoints, *delays, args.seed, args.project_name)
        cluster.configure(quorum)  # recreates the node node.client finds leading
        yield cluster, compose_pids(cluster)
        settle(cluster.endpoints.leader)
        return
    data_dir = os.path.join(workdir, f"k{quorum}")
    local = LocalCluster(data_dir, args.base_port, *delays, args.seed, args.node_log_level)
    try:
        local.configure(quorum)
        local.endpoints = locate_leader(local.endpoints)
        yield local, local_pids([proc.pid for proc in local.procs])
        settle(local.endpoints.leader)
    finally:
        local.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def locate_leader(endpoints: Endpoints, wait: float = LEADER_WAIT_S) -> Endpoints:
    """The nodes led by the one ``node.client`` finds leading (``Client(...).leader()``); the
    configured first node when the client finds none within ``wait`` or cannot tell which of
    the nodes it is (/health of a revision before the terms lacks the fields)."""
    try:
        return asyncio.run(find_leader(endpoints, timeout=wait))
    except NoLeader as exc:
        first = next(iter(endpoints.by_name))
        progress(f"note: {exc}; taking the first node, {first} at {endpoints.by_name[first]}, as the leader")
        return endpoints.led_by(first)


def get_status(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/status", timeout=10) as response:
        return json.loads(response.read())


def settle(leader_url: str, timeout: float = 10.0) -> None:
    """Wait until the leader has no send in flight before the cluster is stopped or reconfigured.

    Stopping sooner cuts sends off half-way (noise in the nodes' logs), and on Compose the
    leftover sends would still load the followers while the next quorum is measured.
    """
    deadline = time.monotonic() + timeout
    while get_status(leader_url).get("replications_in_flight", 0):
        if time.monotonic() > deadline:
            progress(f"warning: leader still has sends in flight after {timeout:.0f} s; going on")
            return
        time.sleep(0.05)


def leader_status(leader_url: str, quorum: int, delays: tuple[int, int]) -> dict:
    """The leader's /status, after checking that the settings of this run reached it."""
    status = get_status(leader_url)
    want = {"write_quorum": quorum, "min_delay_ms": delays[0], "max_delay_ms": delays[1]}
    wrong = {k: (status.get(k), v) for k, v in want.items() if status.get(k) != v}
    if wrong:
        raise RuntimeError(f"leader runs with {wrong} (seen, wanted); the benchmark would measure something else")
    return status


def leader_address(cluster: Cluster, args: argparse.Namespace) -> tuple[str, int]:
    """Where the clients connect. On Compose: the leader container's own address on the
    project's network, unless --published-port, because the published port on 127.0.0.1 is
    served by Docker's userland proxy, which would be measured along with the store."""
    if isinstance(cluster, ComposeCluster) and not args.published_port:
        container = cluster.compose.container(cluster.endpoints.leader_id)  # the service is the node id
        address = subprocess.run(
            ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", container],
            capture_output=True, text=True, check=True).stdout.split()
        if address:
            return address[0], 8000
        progress("warning: no container address for the leader; going through the published port")
    url = urlsplit(cluster.endpoints.leader)
    return url.hostname or "127.0.0.1", url.port or 80


# --- statistics -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def per_write_us(seconds: float, writes: int) -> float:
    return seconds / writes * 1e6 if writes else math.nan


# --- throughput mode --------------------------------------------------------------------------


@dataclass
class Loop:
    """Shared state of one closed loop; the window bounds stay infinite until they are known."""

    max_writes: int
    keys: int
    sent: int = 0
    errors: int = 0
    first_error: str | None = None
    window_start: float = math.inf
    window_end: float = math.inf
    latencies_ms: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class HttpWrites:
    """The store's writes: ``POST /write`` on keep-alive connections to the leader."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    async def connect(self) -> LoadConnection:
        conn = LoadConnection(self.host, self.port, self.timeout)
        await conn.request("GET", "/health")
        return conn

    async def write(self, conn: LoadConnection, n: int, keys: int) -> str | None:
        body = b'{"key": "bench-%d", "value": %d}' % (n % keys, n)
        try:
            status, answer = await conn.request("POST", "/write", body, JSON_HEADERS)
        except RequestFailed as exc:
            return f"no answer: {exc}"
        return None if status == 200 else f"{status}: {answer[:200].decode(errors='replace')}"


class RedisWrites:
    """Redis's: ``SET`` then ``WAIT k`` on one connection per client, sent together."""

    def __init__(self, port: int, replicas: int, timeout: float) -> None:
        self.port, self.replicas, self.timeout_ms = port, replicas, int(timeout * 1000)

    async def connect(self) -> RespConnection:
        return await RespConnection.open("127.0.0.1", self.port)

    async def write(self, conn: RespConnection, n: int, keys: int) -> str | None:
        try:
            return await conn.set_and_wait(b"bench-%d" % (n % keys), b"%d" % n, self.replicas, self.timeout_ms)
        except ConnectionError as exc:
            return str(exc)


class EtcdWrites:
    """etcd's: ``POST /v3/kv/put`` to the JSON gateway of one member, key and value as the store's."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port, self.timeout = port, timeout

    async def connect(self) -> LoadConnection:
        conn = LoadConnection("127.0.0.1", self.port, self.timeout)
        await conn.request("GET", "/health")
        return conn

    async def write(self, conn: LoadConnection, n: int, keys: int) -> str | None:
        body = put_body(b"bench-%d" % (n % keys), b"%d" % n)
        try:
            status, answer = await conn.request("POST", "/v3/kv/put", body, JSON_HEADERS)
        except RequestFailed as exc:
            return f"no answer: {exc}"
        if status == 200 and answer.startswith(b'{"header"'):
            return None
        return f"{status}: {answer[:200].decode(errors='replace')}"


Writes = HttpWrites | RedisWrites | EtcdWrites


async def client_loop(conn, writes: Writes, loop: Loop) -> None:
    """Writes back to back; a write counts if it was acknowledged inside the measured window."""
    while not loop.stop.is_set():
        if loop.sent >= loop.max_writes:
            loop.stop.set()
            break
        loop.sent += 1
        start = time.perf_counter()
        error = await writes.write(conn, loop.sent, loop.keys)
        end = time.perf_counter()
        if error is not None:
            loop.errors += 1
            loop.first_error = loop.first_error or error
        elif loop.window_start <= end < loop.window_end:
            loop.latencies_ms.append((end - start) * 1000)


async def window_timer(loop: Loop, warmup: float, duration: float, pids: dict[str, int]) -> tuple[dict, dict]:
    """Open the window after the warm-up, close it after ``duration`` or at the write cap; CPU at both ends."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(loop.stop.wait(), warmup)
    before = sample_cpu(pids)
    loop.window_start = time.perf_counter()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(loop.stop.wait(), duration)
    loop.window_end = time.perf_counter()
    after = sample_cpu(pids)
    loop.stop.set()
    return before, after


async def closed_loop(writes: Writes, args: argparse.Namespace, clients: int,
                      pids: dict[str, int]) -> tuple[Loop, dict[str, float]]:
    """``clients`` connections writing back to back; returns the loop and CPU seconds per process in the window."""
    loop = Loop(args.max_writes, args.keys)
    conns, timer = [], None
    try:
        # Connect before the clock starts: connection set-up is not part of a write.
        conns = await asyncio.gather(*(writes.connect() for _ in range(clients)))
        timer = asyncio.ensure_future(window_timer(loop, args.warmup, args.duration, pids))
        await asyncio.gather(*(client_loop(conn, writes, loop) for conn in conns))
        before, after = await timer
    finally:
        if timer is not None:
            timer.cancel()
        for conn in conns:
            conn.close()
    return loop, {name: after[name] - before[name] for name in before}


def replication_counts(leader_url: str) -> tuple[int, int]:
    """Confirmed /replicate requests and the entries they carried, summed over the followers
    (zeros when the leader's /status does not tell: the column is then NaN, nothing else lost)."""
    followers = get_status(leader_url).get("followers") or {}
    counts = [f for f in followers.values() if isinstance(f, dict)]
    return sum(f.get("requests", 0) for f in counts), sum(f.get("entries_sent", 0) for f in counts)


def throughput_row(quorum: int, clients: int, loop: Loop, cpu: dict[str, float], fsync: str | None,
                   batching: tuple[int, int], leader: str = "leader") -> dict:
    """One loop's row; ``leader`` names the node (a key of ``cpu``) whose CPU is the leader's."""
    window = loop.window_end - loop.window_start
    ok = len(loop.latencies_ms)
    followers = sum(cpu[name] for name in NODE_NAMES if name != leader)
    return {
        "quorum": quorum, "concurrency": clients, "window_s": window, "writes_ok": ok, "errors": loop.errors,
        "writes_per_s": ok / window if window > 0 else math.nan,
        "latency_mean_ms": mean(loop.latencies_ms), "latency_p50_ms": percentile(loop.latencies_ms, 50),
        "latency_p99_ms": percentile(loop.latencies_ms, 99),
        "leader_cpu_us_per_write": per_write_us(cpu[leader], ok),
        "followers_cpu_us_per_write": per_write_us(followers, ok),
        "follower_cpu_us_per_write_mean": per_write_us(followers / FOLLOWER_COUNT, ok),
        "client_cpu_us_per_write": per_write_us(cpu["client"], ok),
        "leader_cpu_pct": cpu[leader] / window * 100 if window > 0 else math.nan,
        "client_cpu_pct": cpu["client"] / window * 100 if window > 0 else math.nan,
        "entries_per_request": batching[1] / batching[0] if batching[0] else math.nan,
        "fsync": fsync,
    }


def measure_throughput(args: argparse.Namespace, quorum: int, workdir: str) -> list[dict]:
    """One quorum's closed loops, one per client count, plus the lone client when asked for at
    the highest quorum."""
    delays = (0, 0)
    with quorum_cluster(args, quorum, delays, workdir) as (cluster, pids):
        fsync = leader_status(cluster.endpoints.leader, quorum, delays).get("fsync")
        writes = HttpWrites(*leader_address(cluster, args), args.timeout)
        lone = args.single and quorum == max(args.quorums) and 1 not in args.clients
        rows = [store_loop(args, writes, cluster.endpoints, quorum, clients, pids, fsync)
                for clients in args.clients]
        if lone:
            rows.append(dict(store_loop(args, writes, cluster.endpoints, quorum, 1, pids, fsync), single=True))
        return rows


def store_loop(args: argparse.Namespace, writes: HttpWrites, endpoints: Endpoints, quorum: int, clients: int,
               pids: dict[str, int], fsync: str | None) -> dict:
    """One closed loop against the store, with the batching the leader's /status counted meanwhile."""
    before = replication_counts(endpoints.leader)
    loop, cpu = run(closed_loop(writes, args, clients, pids))
    after = replication_counts(endpoints.leader)
    row = throughput_row(quorum, clients, loop, cpu, fsync, (after[0] - before[0], after[1] - before[1]),
                         endpoints.leader_id)
    report_loop(row, loop)
    return row


@contextlib.contextmanager
def noop_server(port: int) -> Iterator[int]:
    """``analysis.noop_server`` on ``port``; yields its pid once it accepts connections."""
    proc = subprocess.Popen([sys.executable, "-m", "analysis.noop_server", str(port)])
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the no-op server on port {port} did not start (exit code {proc.poll()})")
            time.sleep(0.05)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure_baseline(args: argparse.Namespace) -> list[dict]:
    """The same closed loops against one process that does nothing (same HTTP server as a node):
    this machine's ceiling now, at each client count."""
    port = free_port()  # not --base-port: a cluster may be listening there
    rows = []
    with noop_server(port) as pid:
        for clients in args.clients:
            loop, cpu = run(closed_loop(HttpWrites("127.0.0.1", port, args.timeout), args, clients, {"leader": pid}))
            rows.append(baseline_row(clients, loop, cpu))
    return rows


def baseline_row(clients: int, loop: Loop, cpu: dict[str, float]) -> dict:
    window = loop.window_end - loop.window_start
    ok = len(loop.latencies_ms)
    return {
        "concurrency": clients, "window_s": window, "writes_ok": ok, "errors": loop.errors,
        "requests_per_s": ok / window if window > 0 else math.nan,
        "latency_p50_ms": percentile(loop.latencies_ms, 50),
        "server_cpu_us_per_request": per_write_us(cpu["leader"], ok),
        "client_cpu_us_per_request": per_write_us(cpu["client"], ok),
    }


def measure_redis(args: argparse.Namespace) -> list[dict]:
    """The same closed loops against Redis at each quorum and client count, in both durability settings."""
    rows = []
    for durability in DURABILITY:
        progress(f"redis ({durability}): starting one master and five replicas")
        with redis_cluster(durability) as (port, pids):
            for quorum in args.quorums:
                for clients in args.clients:
                    writes = RedisWrites(port, quorum, args.timeout)
                    row = yardstick_loop(args, writes, quorum, clients, pids, durability, f"redis ({durability}) k={quorum}")
                    rows.append({"system": "redis", **row})
    return rows


ETCD_DURABILITY = "raft 4/6, WAL fsync"


def measure_etcd(args: argparse.Namespace) -> list[dict]:
    """The same closed loops against six etcd members at each client count (one cluster for all)."""
    progress("etcd: starting six members")
    with etcd_cluster() as (port, pids):
        writes = EtcdWrites(port, args.timeout)
        return [{"system": "etcd", **yardstick_loop(args, writes, 3, clients, pids, ETCD_DURABILITY, "etcd")}
                for clients in args.clients]


def yardstick_loop(args: argparse.Namespace, writes: Writes, quorum: int, clients: int, pids: dict[str, int],
                   durability: str | None, label: str) -> dict:
    loop, cpu = run(closed_loop(writes, args, clients, pids))
    row = throughput_row(quorum, clients, loop, cpu, durability, (0, 0))
    report_loop(row, loop, label)
    return row


CLIENT_BUSY_PCT = 80


def report_loop(row: dict, loop: Loop, label: str | None = None) -> None:
    label = label or f"k={row['quorum']}"
    progress(f"{label} c={row['concurrency']}: {row['writes_ok']} writes in {row['window_s']:.1f} s, "
             f"{row['errors']} errors" + (f" (first: {loop.first_error})" if loop.first_error else ""))
    if row["client_cpu_pct"] > CLIENT_BUSY_PCT:
        progress(f"warning: the load client was busy {row['client_cpu_pct']:.0f}% of a core at c={row['concurrency']}: "
                 f"it may be what limits this run, not the server")


# --- alternating runs: another revision, this tree, the yardsticks ----------------------------

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREE_START_TIMEOUT_S = 60.0
TREE_STOP_TIMEOUT_S = 25.0  # node.cluster gives each node 10 s before it kills it


@dataclass
class Target:
    """One system ready for load: how to write to it, whose CPU a write costs, what it promises,
    and for the store its nodes and the leader whose /status counts the batching."""

    writes: Writes
    pids: dict[str, int]
    durability: str | None
    endpoints: Endpoints | None = None


def resolve_revision(rev: str) -> str:
    """The commit ``rev`` names, or one line saying it names none."""
    found = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise RuntimeError(f"--before {rev}: no such commit in the repository at {REPO_ROOT}; "
                           f"give a commit, branch or tag (e.g. HEAD~1)")
    return found.stdout.strip()


def export_tree(commit: str, into: str) -> str:
    """The revision's ``node`` package in a directory of its own, by ``git archive``: nothing in
    the repository changes (no worktree to register or forget to remove)."""
    archive = subprocess.run(["git", "-C", REPO_ROOT, "archive", "--format=tar", commit, "node"], capture_output=True)
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {commit[:12]} node failed: {archive.stderr.decode(errors='replace').strip()}")
    os.makedirs(into)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    if not os.path.exists(os.path.join(into, "node", "cluster.py")):
        raise RuntimeError(f"revision {commit[:12]} has no node/cluster.py: too old to run as a local cluster")
    check_tree_imports(into)
    return into


def tree_env(root: str, settings: dict[str, str]) -> dict[str, str]:
    return dict(os.environ, **settings, PYTHONPATH=root)


def check_tree_imports(root: str) -> None:
    """The nodes started in ``root`` must run that tree's code, not the package this venv has installed."""
    probe = "import node.app, node.cluster; print(node.app.__file__); print(node.cluster.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, env=tree_env(root, {}),
                         capture_output=True, text=True, timeout=60)
    files = out.stdout.split()
    if out.returncode != 0 or not files or not all(f.startswith(root + os.sep) for f in files):
        raise RuntimeError(f"the nodes of {root} would not run that tree's code: importing node there gave "
                           f"{files or out.stderr.strip().splitlines()[-1:]}")


@contextlib.contextmanager
def tree_cluster(args: argparse.Namespace, root: str, quorum: int, workdir: str) -> Iterator[Target]:
    """The six nodes of the tree at ``root``, started by that tree's own ``node.cluster`` as a
    subprocess (its start-up and layout, not this tree's), on a fresh data directory."""
    data_dir = tempfile.mkdtemp(prefix="nodes-", dir=workdir)
    settings = dict(LOG_LEVEL=args.node_log_level, **node_settings(quorum, 0, 0, args.seed))
    argv = [sys.executable, "-m", "node.cluster", "--data-dir", data_dir, "--base-port", str(args.base_port)]
    proc = subprocess.Popen(argv, cwd=root, env=tree_env(root, settings), stdout=subprocess.DEVNULL)
    try:
        pids = wait_tree_cluster(proc, root, args.base_port)
        endpoints = locate_leader(make_endpoints("http://127.0.0.1", args.base_port))
        fsync = leader_status(endpoints.leader, quorum, (0, 0)).get("fsync")
        leader = urlsplit(endpoints.leader)
        yield Target(HttpWrites(leader.hostname, leader.port, args.timeout), pids, fsync, endpoints)
        settle(endpoints.leader)
    finally:
        stop_tree_cluster(proc)
        shutil.rmtree(data_dir, ignore_errors=True)


def wait_tree_cluster(proc: subprocess.Popen, root: str, port: int) -> dict[str, int]:
    """Until ``node.cluster`` has all six nodes up (it starts them and waits for their /health,
    so six NODE_IDs among its children and a healthy leader mean it is done)."""
    deadline = time.monotonic() + TREE_START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"python -m node.cluster in {root} exited with code {proc.returncode} at start "
                               f"(its error is above)")
        pids = node_ids(process_tree(proc.pid)[1:])
        if sorted(pids) == sorted(NODE_NAMES):
            with contextlib.suppress(OSError):
                get_status(f"http://127.0.0.1:{port}")
                return pids
        if time.monotonic() > deadline:
            raise RuntimeError(f"the nodes of {root} not up after {TREE_START_TIMEOUT_S:g} s (running: {sorted(pids)})")
        time.sleep(0.1)


def stop_tree_cluster(proc: subprocess.Popen) -> None:
    """SIGTERM to ``node.cluster``, which stops its six nodes; SIGKILL to all seven after the bound."""
    family = process_tree(proc.pid)
    proc.terminate()
    try:
        proc.wait(TREE_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        progress(f"warning: node.cluster (pid {proc.pid}) still running {TREE_STOP_TIMEOUT_S:g} s after SIGTERM: killed")
        for pid in family:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def etcd_target(args: argparse.Namespace) -> Iterator[Target]:
    with etcd_cluster() as (port, pids):
        yield Target(EtcdWrites(port, args.timeout), pids, ETCD_DURABILITY)


@contextlib.contextmanager
def redis_target(args: argparse.Namespace, durability: str, quorum: int) -> Iterator[Target]:
    with redis_cluster(durability) as (port, pids):
        yield Target(RedisWrites(port, quorum, args.timeout), pids, durability)


def alternating_systems(args: argparse.Namespace, workdir: str) -> list[tuple[str, Callable[[], Any]]]:
    """(name, start) of each system a round runs, in order: before, after, the yardsticks."""
    quorum = args.quorums[0]
    systems: list[tuple[str, Callable[[], Any]]] = []
    if args.before is not None:
        before_root = export_tree(args.before_commit, os.path.join(workdir, "before"))
        systems.append(("before", lambda: tree_cluster(args, before_root, quorum, workdir)))
    systems.append(("after", lambda: tree_cluster(args, REPO_ROOT, quorum, workdir)))
    if args.etcd:
        systems.append(("etcd", lambda: etcd_target(args)))
    if args.redis:
        systems += [(f"redis-{d}", lambda d=d: redis_target(args, d, quorum)) for d in DURABILITY]
    return systems


def measure_alternating(args: argparse.Namespace, systems: list[tuple[str, Callable[[], Any]]]) -> list[dict]:
    """``--pairs`` rounds; in each, every system in turn on a fresh cluster, at every client count."""
    rows = []
    for round_ in range(1, args.pairs + 1):
        for name, start in systems:
            progress(f"round {round_}/{args.pairs}: {name}")
            with start() as target:
                for clients in args.clients:
                    row = target_loop(args, target, name, clients)
                    rows.append({"system": name, "round": round_, **row})
    return rows


def target_loop(args: argparse.Namespace, target: Target, name: str, clients: int) -> dict:
    quorum = args.quorums[0]
    if target.endpoints is not None:
        return store_loop(args, target.writes, target.endpoints, quorum, clients, target.pids, target.durability)
    return yardstick_loop(args, target.writes, quorum, clients, target.pids, target.durability, name)


# --- delays mode ------------------------------------------------------------------------------


async def one_seeded_write(conn: LoadConnection, planned: PlannedWrite, quorum: int, names: dict[str, str]) -> dict:
    """One planned write and what its answer says about the drawn delays."""
    body = json.dumps({"key": planned.key, "value": planned.value}).encode()
    start = time.perf_counter()
    try:
        status, raw = await conn.request("POST", "/write", body, JSON_HEADERS)
    except RequestFailed as exc:
        status, raw = 0, json.dumps({"error": str(exc)}).encode()
    latency_ms = (time.perf_counter() - start) * 1000
    answer = json.loads(raw) if raw.startswith(b"{") else {"error": raw[:200].decode(errors="replace")}
    drawn = (answer.get("debug") or {}).get("replication_delays_ms") or {}
    delays = {names.get(address, address): float(ms) for address, ms in drawn.items()}
    kth = kth_smallest(delays.values(), quorum) if status == 200 and len(delays) >= quorum else math.nan
    return {"quorum": quorum, "write": planned.index, "key": planned.key, "status": status, "seq": answer.get("seq"),
            "confirmations": answer.get("confirmations"), "latency_ms": latency_ms, "kth_delay_ms": kth,
            "overhead_ms": latency_ms - kth, "delays_ms": json.dumps(delays, sort_keys=True),
            "error": None if status == 200 else answer.get("error")}


async def seeded_writes(host: str, port: int, args: argparse.Namespace, quorum: int,
                        names: dict[str, str]) -> list[dict]:
    """The study's plan for this quorum, exactly ``concurrency`` writes in flight."""
    queue = list(reversed(plan_writes(args.writes, args.keys, quorum, args.seed)))
    conns = [LoadConnection(host, port, args.timeout) for _ in range(min(args.concurrency, len(queue)))]
    rows: list[dict] = []

    async def worker(conn: LoadConnection) -> None:
        await conn.request("GET", "/health")
        while queue:
            rows.append(await one_seeded_write(conn, queue.pop(), quorum, names))

    try:
        await asyncio.gather(*(worker(conn) for conn in conns))
    finally:
        for conn in conns:
            conn.close()
    return sorted(rows, key=lambda row: row["write"])


def delays_row(quorum: int, writes: list[dict]) -> dict:
    ok = [w for w in writes if w["status"] == 200]
    overhead = [w["overhead_ms"] for w in ok]
    return {"quorum": quorum, "writes_ok": len(ok), "errors": len(writes) - len(ok),
            "latency_mean_ms": mean([w["latency_ms"] for w in ok]),
            "kth_delay_mean_ms": mean([w["kth_delay_ms"] for w in ok]),
            "overhead_median_ms": percentile(overhead, 50), "overhead_p99_ms": percentile(overhead, 99),
            "overhead_min_ms": min(overhead, default=math.nan), "overhead_max_ms": max(overhead, default=math.nan)}


def measure_delays(args: argparse.Namespace, quorum: int, workdir: str) -> tuple[dict, list[dict]]:
    delays = (args.min_delay, args.max_delay)
    with quorum_cluster(args, quorum, delays, workdir) as (cluster, _):
        status = leader_status(cluster.endpoints.leader, quorum, delays)
        if status.get("delay_seed") != args.seed:
            raise RuntimeError(f"leader runs with DELAY_SEED={status.get('delay_seed')}, wanted {args.seed}")
        writes = run(seeded_writes(*leader_address(cluster, args), args, quorum, follower_names(status)))
    row = delays_row(quorum, writes)
    progress(f"k={quorum}: {row['writes_ok']} writes ok, {row['errors']} errors")
    return row, writes


# --- output -----------------------------------------------------------------------------------

THROUGHPUT_COLUMNS = [
    ("quorum", "k", "d"), ("concurrency", "clients", "d"), ("writes_per_s", "writes/s", ".0f"), ("errors", "errors", "d"),
    ("latency_mean_ms", "mean ms", ".2f"), ("latency_p50_ms", "p50 ms", ".2f"), ("latency_p99_ms", "p99 ms", ".2f"),
    ("leader_cpu_us_per_write", "leader µs/w", ".0f"), ("followers_cpu_us_per_write", "followers µs/w", ".0f"),
    ("follower_cpu_us_per_write_mean", "per follower", ".0f"), ("client_cpu_us_per_write", "client µs/w", ".0f"),
    ("leader_cpu_pct", "leader cpu%", ".0f"), ("client_cpu_pct", "client cpu%", ".0f"),
    ("entries_per_request", "entries/req", ".1f"),
]
REDIS_COLUMNS = [column for column in THROUGHPUT_COLUMNS if column[0] != "entries_per_request"] + [
    ("fsync", "fsync", "s")]
ETCD_COLUMNS = [column for column in REDIS_COLUMNS if column[0] != "quorum"]
ALTERNATING_COLUMNS = [("system", "system", "s"), ("round", "round", "d")] + [
    column for column in THROUGHPUT_COLUMNS if column[0] not in ("quorum", "concurrency", "latency_mean_ms",
                                                                   "follower_cpu_us_per_write_mean")]
DELAYS_COLUMNS = [
    ("quorum", "k", "d"), ("writes_ok", "writes ok", "d"), ("errors", "errors", "d"),
    ("latency_mean_ms", "mean latency ms", ".1f"), ("kth_delay_mean_ms", "mean k-th delay", ".1f"),
    ("overhead_median_ms", "overhead p50", ".2f"), ("overhead_p99_ms", "overhead p99", ".2f"),
    ("overhead_min_ms", "min", ".2f"), ("overhead_max_ms", "max", ".2f"),
]


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    cells = [[header for _, header, _ in columns]]
    cells += [[format(row[key], fmt) for key, _, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells)


def write_csv(path: str, rows: list[dict]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)
    return path


def run(coro):
    """Run the client loop on uvloop when it is installed: its loop costs less CPU per request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# --- the benchmark ----------------------------------------------------------------------------


def describe(args: argparse.Namespace) -> str:
    where = f"Docker Compose (project {args.project_name or 'default'})" if args.compose else "local processes"
    if args.mode == "throughput":
        what = (f"{'/'.join(map(str, args.clients))} clients, {args.duration:g} s window after {args.warmup:g} s warm-up, "
                f"no simulated delay")
        if args.pairs:
            before = f"{args.before} ({args.before_commit[:10]}) against " if args.before else ""
            what += f"; {args.pairs} rounds of {before}this tree at k={args.quorums[0]}, alternating"
    else:
        what = (f"{args.writes} writes, {args.concurrency} clients, {args.keys} keys, "
                f"delays {args.min_delay}..{args.max_delay} ms, seed {args.seed}")
    return f"{args.mode} on {where}, {os.cpu_count()} CPUs: {what}"


def raise_file_limit(connections: int) -> None:
    """Room for every client's connection, on both ends, in this process and the servers it starts."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * connections + 1024
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < wanted:
            progress(f"warning: open files limited to {new} (hard limit); {connections} clients may not all connect")


def check_tools(args: argparse.Namespace) -> None:
    """Missing tools and unknown revisions: say so now, not after minutes of measuring."""
    if args.mode != "throughput":
        return
    if args.redis:
        redis_server()
    if args.etcd:
        etcd_binary()
    args.before_commit = resolve_revision(args.before) if args.before is not None else None


def main(argv: list[str] | None = None) -> dict[str, str]:
    """Every quorum in turn (or the alternating rounds), then the tables and the CSV files;
    returns file name -> path."""
    args = parse_args(argv)
    check_tools(args)
    raise_file_limit(max(args.clients + [args.concurrency]))
    workdir = tempfile.mkdtemp(prefix="kv-bench-")
    rows: list[dict] = []
    writes: list[dict] = []
    try:
        systems = alternating_systems(args, workdir) if args.pairs else []
        if args.mode == "throughput" and not args.no_baseline:
            progress("baseline: a no-op server, same client")
            args.baseline = measure_baseline(args)
        if systems:
            return report_alternating(args, measure_alternating(args, systems))
        for quorum in args.quorums:
            progress(f"k={quorum}: starting")
            if args.mode == "throughput":
                rows += measure_throughput(args, quorum, workdir)
            else:
                row, quorum_writes = measure_delays(args, quorum, workdir)
                rows.append(row)
                writes += quorum_writes
        if args.mode == "throughput" and args.redis:
            args.redis_rows = measure_redis(args)
        if args.mode == "throughput" and args.etcd:
            args.etcd_rows = measure_etcd(args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report(args, rows, writes)


def report(args: argparse.Namespace, rows: list[dict], writes: list[dict]) -> dict[str, str]:
    print(describe(args))
    if args.mode != "throughput":
        print(format_table(rows, DELAYS_COLUMNS))
        paths = {"delays": write_csv(os.path.join(args.output, "delays.csv"), rows),
                 "delays_writes": write_csv(os.path.join(args.output, "delays_writes.csv"), writes)}
        print("saved: " + ", ".join(paths.values()))
        return paths
    main_rows = [row for row in rows if not row.get("single")]
    print(format_table(main_rows, THROUGHPUT_COLUMNS))
    for row in rows:
        if row.get("single"):
            print(f"single client at k={row['quorum']}: p50 {row['latency_p50_ms']:.2f} ms, "
                  f"p99 {row['latency_p99_ms']:.2f} ms, {row['writes_per_s']:.0f} writes/s")
    paths = {"throughput": write_csv(os.path.join(args.output, "throughput.csv"), rows)}
    paths.update(report_baseline(args, main_rows))
    redis_rows = getattr(args, "redis_rows", None)
    if redis_rows:
        print(redis_report(main_rows, redis_rows))
        paths["redis"] = write_csv(os.path.join(args.output, "redis.csv"), redis_rows)
    etcd_rows = getattr(args, "etcd_rows", None)
    if etcd_rows:
        print(etcd_report(main_rows, etcd_rows))
        paths["etcd"] = write_csv(os.path.join(args.output, "etcd.csv"), etcd_rows)
    print("saved: " + ", ".join(paths.values()))
    return paths


def report_baseline(args: argparse.Namespace, store_rows: list[dict]) -> dict[str, str]:
    baseline = getattr(args, "baseline", None)
    if not baseline:
        return {}
    by_clients = {b["concurrency"]: b for b in baseline}
    for b in baseline:
        print(f"baseline, a no-op server with the same {b['concurrency']} clients: "
              f"{b['requests_per_s']:.0f} requests/s, p50 {b['latency_p50_ms']:.2f} ms, "
              f"{b['server_cpu_us_per_request']:.0f} µs server CPU per request")
    for row in store_rows:
        if row["concurrency"] in by_clients and row.get("system", "after") == "after":
            ceiling = by_clients[row["concurrency"]]["requests_per_s"]
            label = f"round {row['round']}" if "round" in row else f"k={row['quorum']}"
            print(f"  {label} c={row['concurrency']}: {row['writes_per_s'] / ceiling:.0%} of the baseline")
    return {"baseline": write_csv(os.path.join(args.output, "baseline.csv"), baseline)}


def redis_report(store_rows: list[dict], redis_rows: list[dict]) -> str:
    """Redis's table and, per quorum, this store's writes/s as a multiple of Redis's in this run."""
    version = subprocess.run([redis_server(), "--version"], capture_output=True, text=True).stdout.split()
    lines = [f"Redis on the same machine, same clients, SET + WAIT k ({' '.join(version[:3])}); "
             f"fsync column: none = no persistence (Redis's default), fsync = appendfsync always on all six",
             format_table(redis_rows, REDIS_COLUMNS)]
    for row in store_rows:
        ours = row["writes_per_s"]
        theirs = {r["fsync"]: r["writes_per_s"] for r in redis_rows
                  if r["quorum"] == row["quorum"] and r["concurrency"] == row["concurrency"]}
        if theirs:
            lines.append(f"  k={row['quorum']} c={row['concurrency']}: this store {ours:.0f} writes/s = "
                         + ", ".join(f"{ours / w:.2f}x Redis ({d})" for d, w in theirs.items()))
    return "\n".join(lines)


def etcd_report(store_rows: list[dict], etcd_rows: list[dict]) -> str:
    """etcd's table and, per client count, this store's writes/s at k=3 (equal durability) as a multiple of etcd's."""
    lines = [f"{etcd_version()}, six members on the same machine, same clients, PUT to the Raft leader's JSON gateway; "
             f"committed on 4 of 6 WAL-synced members, the durability of this store's k=3",
             format_table(etcd_rows, ETCD_COLUMNS)]
    theirs = {r["concurrency"]: r for r in etcd_rows}
    ours = [row for row in store_rows if row["quorum"] == 3 and row["concurrency"] in theirs]
    for row in ours:
        other = theirs[row["concurrency"]]
        lines.append(f"  c={row['concurrency']}: this store at k=3 {row['writes_per_s']:.0f} writes/s = "
                     f"{row['writes_per_s'] / other['writes_per_s']:.2f}x etcd; p99 {row['latency_p99_ms']:.2f} "
                     f"against {other['latency_p99_ms']:.2f} ms (one run each, minutes apart: --pairs alternates)")
    if not ours:
        lines.append("  (no k=3 run of this store to compare with: add 3 to --quorums)")
    return "\n".join(lines)


def report_alternating(args: argparse.Namespace, rows: list[dict]) -> dict[str, str]:
    """Per client count: every run, each side's range, and the per-round ratios of this tree to the others."""
    print(describe(args))
    for clients in args.clients:
        at = [row for row in rows if row["concurrency"] == clients]
        print(f"\n{clients} clients, k={args.quorums[0]}")
        print(format_table(at, ALTERNATING_COLUMNS))
        for line in alternating_summary(at):
            print("  " + line)
    paths = {"alternating": write_csv(os.path.join(args.output, "alternating.csv"), rows)}
    paths.update(report_baseline(args, rows))
    print("saved: " + ", ".join(paths.values()))
    return paths


def alternating_summary(rows: list[dict]) -> list[str]:
    """Each system's range over the rounds, then after/other per round with its range."""
    systems = list(dict.fromkeys(row["system"] for row in rows))
    by = {(row["system"], row["round"]): row for row in rows}
    lines = []
    for system in systems:
        mine = [row for row in rows if row["system"] == system]
        lines.append(f"{system}: {span(mine, 'writes_per_s', '.0f')} writes/s, p50 {span(mine, 'latency_p50_ms', '.2f')} ms, "
                     f"p99 {span(mine, 'latency_p99_ms', '.2f')} ms")
    for other in systems:
        if other == "after":
            continue
        ratios = [by[("after", r)]["writes_per_s"] / by[(other, r)]["writes_per_s"]
                  for s, r in by if s == other and ("after", r) in by and by[(other, r)]["writes_per_s"] > 0]
        if ratios:
            lines.append(f"after/{other} writes/s per round: {' '.join(f'{x:.2f}' for x in ratios)} "
                         f"(range {min(ratios):.2f}-{max(ratios):.2f})")
    return lines


def span(rows: list[dict], key: str, fmt: str) -> str:
    values = [row[key] for row in rows if not math.isnan(row[key])]
    if not values:
        return "n/a"
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low}-{high}"


def cli() -> None:
    run_cli(main, "drop --compose")


if __name__ == "__main__":
    cli()
