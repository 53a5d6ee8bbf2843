"""Crash faults on the local six-process cluster: SIGKILL mid-load, torn tails, restarts."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
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
        env = {**inherited, "MIN_DELAY": "0", "MAX_DELAY": "100", "CATCHUP_INTERVAL": "300",
               "REPLICATION_SECRET": "local-secret", "WRITE_TIMEOUT": "3000", **settings}
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
    started = time.monotonic()
    wait_converged(cluster.base, timeout=60)
    converge_s = time.monotonic() - started
    data = {n: http("GET", cluster.port(n), "/all")[1]["data"] for n in NAMES}
    verdict = check(result, prefix, data)
    record(f"local: {name}", verdict, converge_s)
    assert verdict.valid, (verdict.lost[:10], verdict.unexpected[:10], verdict.partial[:10])
    assert all(d == data["leader"] for d in data.values())
    assert compare_logs([cluster.log_path(n) for n in NAMES])["equal"]
    leader_log = load(cluster.log_path("leader"))
    assert check_sequence(result, leader_log, compacted_through=min(leader_log, default=1) - 1) == []
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


# --- snapshots and log compaction ------------------------------------------------------------

@pytest.fixture
def compacting(tmp_path):
    """A cluster that snapshots every 40 entries and keeps 10 for lagging followers: a follower
    down for a few dozen writes needs the leader's snapshot."""
    running = Cluster(tmp_path, SNAPSHOT_EVERY="40", RETAIN_ENTRIES="10", MAX_DELAY="30")
    yield running
    running.stop()


def snapshot_status(cluster, name) -> dict:
    return http("GET", cluster.port(name), "/status")[1]["snapshot"]


def test_a_follower_wiped_under_load_is_restored_from_the_leaders_snapshot(compacting):
    cluster, prefix = compacting, f"wipe-{uuid.uuid4().hex[:6]}-"
    load_ = Load(f"http://127.0.0.1:{cluster.base}", prefix, count=300, concurrency=8, max_seconds=60).start()
    try:
        load_.wait_completed(60)
        cluster.kill("follower2")
        shutil.rmtree(os.path.join(cluster.data_dir, "follower2"))  # a disk lost: nothing of it stays
        load_.wait_completed(200)  # meanwhile the leader compacts what follower2 would need
        cluster.restart("follower2")
    finally:
        result = load_.join()
    verdict = settle_and_check(cluster, "follower wiped, restored from a snapshot", result, prefix)
    assert verdict.ok > 0
    restored = snapshot_status(cluster, "follower2")
    # Started from the leader's snapshot (again, if the leader compacted past it while it caught up) ...
    assert restored["installed"] >= 1 and restored["seq"] > 0
    assert min(load(cluster.log_path("follower2"))) > 1  # ... not from the leader's whole history


def test_the_leader_sigkilled_right_after_a_compaction_loses_no_acknowledged_write(compacting):
    cluster, prefix = compacting, f"compact-kill-{uuid.uuid4().hex[:6]}-"
    load_ = Load(f"http://127.0.0.1:{cluster.base}", prefix, count=300, concurrency=8, max_seconds=60).start()
    try:
        wait_until(lambda: snapshot_status(cluster, "leader")["taken"] >= 2, timeout=60)
        cluster.kill("leader")  # the log was just rewritten and the snapshot renamed into place
        cluster.restart("leader")
    finally:
        result = load_.join()
    verdict = settle_and_check(cluster, "leader SIGKILL right after a compaction", result, prefix)
    assert verdict.ok > 0 and snapshot_status(cluster, "leader")["seq"] >= 80


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
