"""`python -m analysis.bench`: short runs of both modes on the local cluster, on free ports."""

from __future__ import annotations

import csv

import pytest

from analysis.bench import main, parse_args, percentile
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
