"""`python -m analysis.bench`: short runs of both modes on the local cluster, on free ports."""

from __future__ import annotations

import asyncio
import csv
import shutil

import pytest

from analysis.bench import RedisWrites, main, parse_args, percentile
from analysis.redisref import RedisMissing, RespConnection
from tests.net import free_port_block

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
