"""`python -m analysis.bench`: short runs of both modes on the local cluster, on free ports,
the yardsticks' wire formats against fakes, and etcd itself when it is installed."""

from __future__ import annotations

import asyncio
import base64
import csv
import json
import os
import shutil
import time
import types

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from analysis import bench
from analysis.bench import EtcdWrites, RedisWrites, alternating_summary, main, parse_args, percentile
from analysis.cluster import Endpoints
from analysis.etcdref import EtcdMissing, etcd_cluster
from analysis.loadclient import LoadConnection
from analysis.noop_server import ANSWER
from analysis.redisref import RedisMissing, RespConnection
from tests.net import free_port_block
from tests.test_failover import promote

ETCD_MISSING = "etcd not on PATH (apt-get install etcd-server); the Makefile and CI do not install it"

CPU_COLUMNS = ("leader_cpu_us_per_write", "followers_cpu_us_per_write", "follower_cpu_us_per_write_mean",
               "client_cpu_us_per_write")


def read_rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_percentile_interpolates_like_numpy():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 99) == pytest.approx(4.96)
    assert percentile([7.0], 99) == 7.0


def test_cli_defaults_and_rejections(capsys):
    args = parse_args([])
    assert (args.mode, args.quorums, args.concurrency, args.duration, args.warmup) == ("throughput", [1, 2, 3, 4, 5], 10, 5, 1)
    assert (args.max_writes, args.writes, args.keys, args.seed, args.base_port) == (200000, 100, 10, 1, 8000)
    for bad in (["--quorums", "6"], ["--concurrency", "0"], ["--min-delay", "5", "--max-delay", "1"],
                ["--duration", "0"], ["--base-url", "http://10.0.0.1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    capsys.readouterr()


@pytest.mark.cluster
def test_throughput_run_measures_writes_and_cpu(tmp_path):
    paths = main(["--quorums", "1", "5", "--duration", "1", "--warmup", "0.2", "--output", str(tmp_path),
                  "--base-port", str(free_port_block())])

    rows = read_rows(paths["throughput"])
    assert [int(row["quorum"]) for row in rows] == [1, 5]
    for row in rows:
        assert float(row["writes_per_s"]) > 0 and int(row["errors"]) == 0
        assert all(float(row[column]) > 0 for column in CPU_COLUMNS), row
    [baseline] = read_rows(paths["baseline"])  # the no-op server measured in the same run
    assert float(baseline["requests_per_s"]) > 0 and int(baseline["errors"]) == 0
    assert float(baseline["server_cpu_us_per_request"]) > 0


@pytest.mark.cluster
def test_delays_run_never_beats_the_kth_delay(tmp_path):
    paths = main(["--mode", "delays", "--quorums", "1", "5", "--writes", "20", "--max-delay", "50",
                  "--output", str(tmp_path), "--base-port", str(free_port_block())])

    summary = read_rows(paths["delays"])
    assert [(int(row["quorum"]), int(row["writes_ok"]), int(row["errors"])) for row in summary] == [(1, 20, 0), (5, 20, 0)]
    writes = read_rows(paths["delays_writes"])
    assert len(writes) == 40
    # A write cannot gather k confirmations before k of its delays have run out (the delays
    # are reported rounded to the microsecond).
    assert all(float(row["overhead_ms"]) >= -0.001 for row in writes)
    assert all(0 <= float(row["kth_delay_ms"]) <= 50 for row in writes)


class FakeRedis(asyncio.Protocol):
    """Answers SET with +OK and WAIT with how many replicas the test says acknowledged."""

    acked = 5

    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        self.buffer += data
        while True:
            command = parse_command(self.buffer)
            if command is None:
                return
            parts, self.buffer = command
            self.transport.write(b"+OK\r\n" if parts[0] == b"SET" else b":%d\r\n" % self.acked)


def parse_command(buffer: bytes):
    """(parts, rest) of one RESP array of bulk strings at the start of ``buffer``, or None if incomplete."""
    if not buffer.startswith(b"*") or b"\r\n" not in buffer:
        return None
    head, rest = buffer.split(b"\r\n", 1)
    parts = []
    for _ in range(int(head[1:])):
        if b"\r\n" not in rest:
            return None
        length_line, rest = rest.split(b"\r\n", 1)
        length = int(length_line[1:])
        if len(rest) < length + 2:
            return None
        parts.append(rest[:length])
        rest = rest[length + 2:]
    return parts, rest


@pytest.mark.gen_test
async def test_redis_writes_count_only_when_enough_replicas_acknowledged():
    server = await asyncio.get_running_loop().create_server(FakeRedis, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        conn = await RespConnection.open("127.0.0.1", port)
        FakeRedis.acked = 5
        assert await RedisWrites(port, 5, 1.0).write(conn, 7, 10) is None
        FakeRedis.acked = 3
        error = await RedisWrites(port, 4, 1.0).write(conn, 8, 10)
        assert error == "WAIT 4 answered b':3' (fewer replicas within 1000 ms)"
        conn.close()
    finally:
        server.close()


def test_redis_yardstick_without_redis_server_says_how_to_get_it(monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RedisMissing, match="apt-get install redis-server"):
        main(["--redis", "--quorums", "5"])
    with pytest.raises(SystemExit):
        parse_args(["--redis", "--mode", "delays"])
    capsys.readouterr()


def test_alternating_runs_reject_what_they_cannot_do(capsys):
    args = parse_args(["--before", "HEAD"])
    assert (args.quorums, args.pairs, args.clients) == ([3], 3, [10])
    assert parse_args(["--clients", "1", "10", "100"]).clients == [1, 10, 100]
    for bad in (["--before", "HEAD", "--compose"], ["--before", "HEAD", "--quorums", "1", "2"],
                ["--pairs", "0"], ["--before", "HEAD", "--mode", "delays"], ["--etcd", "--mode", "delays"],
                ["--clients", "10", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    capsys.readouterr()


def test_before_with_compose_says_why(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--before", "HEAD", "--compose"])
    assert "run both revisions as local processes; drop --compose" in capsys.readouterr().err


def test_unknown_revision_is_one_line_naming_it():
    with pytest.raises(RuntimeError, match="--before no-such-rev-4f2: no such commit") as exc:
        main(["--before", "no-such-rev-4f2", "--no-baseline"])
    assert "\n" not in str(exc.value)


def test_etcd_yardstick_without_etcd_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(EtcdMissing, match="apt-get install etcd-server"):
        main(["--etcd", "--quorums", "3"])


def test_alternating_summary_gives_each_rounds_ratio_and_the_range():
    def row(system, round_, rate):
        return {"system": system, "round": round_, "writes_per_s": rate, "latency_p50_ms": 1.0, "latency_p99_ms": 2.0}

    rows = [row("before", 1, 100.0), row("after", 1, 110.0), row("etcd", 1, 50.0),
            row("before", 2, 100.0), row("after", 2, 90.0), row("etcd", 2, 60.0)]
    lines = alternating_summary(rows)
    assert "before: 100 writes/s, p50 1.00 ms, p99 2.00 ms" in lines
    assert "after: 90-110 writes/s, p50 1.00 ms, p99 2.00 ms" in lines
    assert "after/before writes/s per round: 1.10 0.90 (range 0.90-1.10)" in lines
    assert "after/etcd writes/s per round: 2.20 1.50 (range 1.50-2.20)" in lines


class FakeGateway(RequestHandler):
    """etcd's v3 JSON gateway as far as a put goes: base64 fields in, a header out, or an error."""

    puts: list[tuple[bytes, bytes]] = []
    fail = False

    def post(self) -> None:
        request = json.loads(self.request.body)
        if self.fail:
            self.set_status(400)
            self.write({"error": "etcdserver: too many requests", "code": 8})
            return
        FakeGateway.puts.append((base64.b64decode(request["key"]), base64.b64decode(request["value"])))
        self.write({"header": {"cluster_id": "1", "member_id": "2", "revision": str(len(self.puts)), "raft_term": "2"}})


class FakeHealth(RequestHandler):
    def get(self) -> None:
        self.write({"health": "true"})


def test_etcd_writes_speak_the_v3_json_gateway():
    async def scenario():
        sock, port = bind_unused_port()
        server = HTTPServer(Application([("/v3/kv/put", FakeGateway), ("/health", FakeHealth)]))
        server.add_sockets([sock])
        writes = EtcdWrites(port, 5.0)
        conn = await writes.connect()
        try:
            ok = await writes.write(conn, 17, 10)
            FakeGateway.fail = True
            refused = await writes.write(conn, 18, 10)
        finally:
            FakeGateway.fail = False
            conn.close()
            server.stop()
        return ok, refused

    FakeGateway.puts = []
    ok, refused = asyncio.run(scenario())
    assert ok is None
    assert FakeGateway.puts == [(b"bench-7", b"17")]  # the store's key and value: {"key": "bench-7", "value": 17}
    assert refused.startswith("400: ") and "too many requests" in refused


def test_noop_server_answers_on_tornados_http_server():
    async def scenario(port):
        conn = LoadConnection("127.0.0.1", port, 5.0)
        try:
            return [await conn.request("POST", "/write", b'{"key": "a", "value": 1}') for _ in range(3)], conn.connects
        finally:
            conn.close()

    port = bench.free_port()
    with bench.noop_server(port):
        answers, connects = asyncio.run(scenario(port))
    assert answers == [(200, ANSWER)] * 3 and connects == 1


@pytest.mark.skipif(shutil.which("etcd") is None, reason=ETCD_MISSING)
def test_etcd_yardstick_commits_puts_on_six_members():
    args = types.SimpleNamespace(max_writes=100000, keys=10, warmup=0.1, duration=0.5)
    with etcd_cluster() as (port, pids):
        loop, cpu = bench.run(bench.closed_loop(EtcdWrites(port, 5.0), args, 4, pids))
        data_dirs = [data_dir(pid) for pid in pids.values()]
    row = bench.throughput_row(3, 4, loop, cpu, bench.ETCD_DURABILITY, (0, 0))
    assert sorted(pids) == sorted(bench.NODE_NAMES)
    assert row["writes_ok"] > 0 and row["errors"] == 0, loop.first_error
    assert row["leader_cpu_us_per_write"] > 0 and row["followers_cpu_us_per_write"] > 0
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids.values())  # stopped and reaped
    assert len(set(data_dirs)) == 6 and not any(os.path.exists(d) for d in data_dirs)  # each its own, removed


def data_dir(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().decode().split("\0")
    return argv[argv.index("--data-dir") + 1]


@pytest.mark.cluster
def test_before_head_runs_both_sides_in_one_pair(tmp_path):
    paths = main(["--before", "HEAD", "--pairs", "1", "--clients", "2", "--duration", "0.5", "--warmup", "0.1",
                  "--no-baseline", "--output", str(tmp_path), "--base-port", str(free_port_block())])

    rows = read_rows(paths["alternating"])
    assert [(row["system"], row["round"], row["concurrency"]) for row in rows] == [("before", "1", "2"), ("after", "1", "2")]
    for row in rows:
        assert float(row["writes_per_s"]) > 0 and int(row["errors"]) == 0, row
        assert all(float(row[column]) > 0 for column in CPU_COLUMNS), row


# --- finding the leader before a run ----------------------------------------------------------


def health_app(answer: dict) -> Application:
    class Health(RequestHandler):
        def get(self) -> None:
            self.write(answer)

    return Application([("/health", Health)])


@pytest.mark.gen_test(timeout=30)
async def test_leader_found_by_the_client_else_the_first_node_after_a_short_bound():
    """Nodes of an old revision: /health without term or leader_address (the oldest without a
    role either). locate_leader runs its own event loop, so it runs in a thread here."""
    answers = {"none": [{"status": "ok"}, {"status": "ok"}],
               "role only": [{"status": "ok", "role": "follower", "node_id": "leader"},
                             {"status": "ok", "role": "leader", "node_id": "follower1"}]}
    loop = asyncio.get_running_loop()
    found = {}
    for case, bodies in answers.items():
        servers, urls = [], {}
        for name, body in zip(("leader", "follower1"), bodies):
            sock, port = bind_unused_port()
            server = HTTPServer(health_app(body))
            server.add_sockets([sock])
            servers.append(server)
            urls[name] = f"http://127.0.0.1:{port}"
        try:
            started = time.monotonic()
            endpoints = await loop.run_in_executor(None, bench.locate_leader, Endpoints(urls), 0.5)
            found[case] = (endpoints.leader_id, endpoints.leader == urls[endpoints.leader_id],
                           time.monotonic() - started < 5)
        finally:
            for server in servers:
                server.stop()
    assert found == {"none": ("leader", True, True), "role only": ("follower1", True, True)}


@pytest.mark.gen_test(timeout=60)
async def test_leader_found_after_a_promotion_and_its_cpu_is_the_leaders(make_cluster):
    async with make_cluster(MAX_DELAY="5") as cluster:
        await cluster.write("a", 1)
        await cluster.stop("leader")
        assert (await promote(cluster, "follower2"))[0] == 200
        await cluster.start("leader")
        endpoints = Endpoints({name: f"http://{cluster.address(name)}" for name in cluster.ports})
        located = await asyncio.get_running_loop().run_in_executor(None, bench.locate_leader, endpoints, 5.0)
    assert located.leader_id == "follower2" and located.leader == endpoints.by_name["follower2"]

    loop = bench.Loop(100, 10, window_start=0.0, window_end=1.0, latencies_ms=[1.0] * 10)
    cpu = {name: 0.01 for name in bench.NODE_NAMES} | {"follower2": 0.05, "client": 0.02}
    row = bench.throughput_row(3, 2, loop, cpu, "batch", (0, 0), located.leader_id)
    assert row["leader_cpu_us_per_write"] == pytest.approx(5000)  # 0.05 s over 10 writes
    assert row["followers_cpu_us_per_write"] == pytest.approx(5000)  # five followers at 0.01 s
