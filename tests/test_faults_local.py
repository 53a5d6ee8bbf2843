"""Crash faults on the local six-process cluster: SIGKILL mid-load, torn tails, restarts."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from node import cluster as local_cluster
from node.logtool import compare_logs, load
from tests.dockerenv import E2E_SETTINGS
from tests.history import Load, check, check_sequence, record
from tests.net import free_port_block
from tests.test_cluster import http, wait_converged

pytestmark = pytest.mark.cluster

NAMES = ["leader"] + [f"follower{i}" for i in range(1, 6)]


class Cluster(local_cluster.LocalCluster):
    """The local cluster, unsupervised (the default policy): these tests kill and restart
    nodes themselves, so no automatic restart may race with them."""

    def __init__(self, data_dir, **settings):
        self.data_dir = str(data_dir)
        # Not the Compose suite's settings (tests.dockerenv puts them in the environment for the
        # session): its FAILOVER=manual would turn these clusters' automatic failover off.
        inherited = {k: v for k, v in os.environ.items() if k not in E2E_SETTINGS}
        env = dict(inherited, MIN_DELAY="0", MAX_DELAY="100", CATCHUP_INTERVAL="300", REPLICATION_SECRET="local-secret",
                   WRITE_TIMEOUT="3000", **settings)
        super().__init__(self.data_dir, free_port_block(), env=env, quiet=True)
        self.base = self.port("leader")
        self.start()

    def log_path(self, name):
        return os.path.join(self.data_dir, name, "replication.log")


@pytest.fixture
def cluster(tmp_path):
    running = Cluster(tmp_path)
    yield running
    running.stop()


def settle_and_check(cluster, name, result, prefix):
    import time

    started = time.monotonic()
    wait_converged(cluster.base, timeout=60)
    converge_s = time.monotonic() - started
    data = {n: http("GET", cluster.port(n), "/all")[1]["data"] for n in NAMES}
    verdict = check(result, prefix, data)
    record(f"local: {name}", verdict, converge_s)
    assert verdict.valid, (verdict.lost[:10], verdict.unexpected[:10], verdict.partial[:10])
    assert all(d == data["leader"] for d in data.values())
    assert compare_logs([cluster.log_path(n) for n in NAMES])["equal"]
    assert check_sequence(result, load(cluster.log_path("leader"))) == []
    return verdict


@pytest.mark.parametrize("victim", ["follower3", "leader"])
def test_sigkill_mid_load_loses_no_acknowledged_write(cluster, victim):
    prefix = f"kill-{victim}-{uuid.uuid4().hex[:6]}-"
    load_ = Load(f"http://127.0.0.1:{cluster.base}", prefix, count=200, concurrency=8, max_seconds=60).start()
    try:
        load_.wait_completed(50)
        cluster.kill(victim)
        load_.wait_completed(120)
        cluster.restart(victim)
    finally:
        result = load_.join()
    after = Load(f"http://127.0.0.1:{cluster.base}", prefix + "healed-", count=20, concurrency=4).start().join()
    assert after.count("ok") == 20, [op.error for op in after.ops if op.status != "ok"]
    # Numbering went on after the crash: writes after the restart took new, higher seqs.
    assert min(op.seq for op in after.ops) > max(op.seq for op in result.ops if op.status == "ok")
    result.ops.extend(after.ops)
    verdict = settle_and_check(cluster, f"SIGKILL {victim}", result, prefix)
    assert verdict.ok > 0


def test_torn_tail_on_a_follower_is_dropped_and_fetched_again(cluster):
    for i in range(10):
        assert http("POST", cluster.base, "/write", {"key": f"t{i}", "value": i})[0] == 200
    wait_converged(cluster.base)
    cluster.kill("follower2")
    path = cluster.log_path("follower2")
    with open(path, "r+b") as f:  # cut the last record in half, as a crash mid-write would
        size = f.seek(0, os.SEEK_END)
        f.truncate(size - 25)
    cluster.restart("follower2")
    wait_converged(cluster.base)
    assert compare_logs([cluster.log_path("leader"), path])["equal"]
    assert http("GET", cluster.port("follower2"), "/read/t9")[1]["value"] == 9


def test_corrupt_middle_record_stops_the_follower_naming_file_and_offset(cluster):
    for i in range(5):
        http("POST", cluster.base, "/write", {"key": f"c{i}", "value": i})
    wait_converged(cluster.base)
    cluster.kill("follower4")
    path = cluster.log_path("follower4")
    data = bytearray(open(path, "rb").read())
    offset = len(b"#kvlog 1\n")
    data[offset + 30] ^= 0x01
    open(path, "wb").write(bytes(data))
    result = subprocess.run([os.sys.executable, "-m", "node"], env=cluster.envs["follower4"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"log {path} is damaged at byte offset {offset}" in result.stderr
    os.rename(path, path + ".damaged")  # the documented repair
    cluster.restart("follower4")
    wait_converged(cluster.base)
    assert compare_logs([cluster.log_path("leader"), path])["equal"]
