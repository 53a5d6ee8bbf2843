"""The local six-process cluster (`python -m node.cluster`): the same nodes as real processes."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from node import cluster as local_cluster
from node.logtool import compare_logs
from tests import net
from tests.net import free_port_block

pytestmark = pytest.mark.cluster


def http(method, port, path, body=None):
    return net.http(method, f"http://127.0.0.1:{port}{path}", body)


def wait_converged(base, followers=5, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        last = http("GET", base, "/status")[1]["last_seq"]
        applied = [http("GET", base + i, "/status")[1]["applied_seq"] for i in range(1, followers + 1)]
        if all(a == last for a in applied):
            return last
        assert time.monotonic() < deadline, f"followers at {applied}, leader at {last}"
        time.sleep(0.05)


def env(**settings):
    return dict(os.environ, MIN_DELAY="0", MAX_DELAY="50", CATCHUP_INTERVAL="200", **settings)


def test_cluster_serves_writes_and_restarts_with_its_data(tmp_path):
    base = free_port_block()
    procs = local_cluster.start(str(tmp_path), base, env=env(WRITE_QUORUM="3"), quiet=True)
    try:
        for i in range(10):
            status, answer = http("POST", base, "/write", {"key": f"k{i}", "value": i})
            assert status == 200 and answer["confirmations"] >= 3 and answer["seq"] == i + 1
        wait_converged(base)
    finally:
        local_cluster.stop(procs)
    assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
    logs = [str(tmp_path / name / "replication.log") for name in ["leader"] + [f"follower{i}" for i in range(1, 6)]]
    assert compare_logs(logs)["equal"]

    procs = local_cluster.start(str(tmp_path), base, env=env(), quiet=True)
    try:
        for port in range(base, base + 6):
            assert http("GET", port, "/read/k9")[1]["value"] == 9
        assert http("POST", base, "/write", {"key": "again", "value": 1})[1]["seq"] == 11
        wait_converged(base)
    finally:
        local_cluster.stop(procs)


def test_cluster_command_prints_addresses_and_stops_on_sigterm(tmp_path):
    base = free_port_block()
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cluster", "--data-dir", str(tmp_path), "--base-port", str(base)],
        env=env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(8)]
        assert lines[0].startswith("cluster: ") and "failover" in lines[0]  # automatic (etcd found) or manual
        assert f"http://127.0.0.1:{base}" in lines[1] and "leader" in lines[1]
        assert f"http://127.0.0.1:{base + 5}" in lines[6]
        assert http("GET", base + 3, "/health")[1]["role"] == "follower"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "cluster stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{base}/health", timeout=1)


def test_bad_setting_stops_the_cluster_with_the_node_error(tmp_path):
    base = free_port_block()
    with pytest.raises(RuntimeError, match="exited with code 2"):
        local_cluster.start(str(tmp_path), base, env=env(WRITE_QUORUM="9"), quiet=True)


def test_a_taken_port_stops_the_start_before_any_node_runs(tmp_path):
    base = net.free_port_block()
    with socket.socket() as squatter:  # e.g. the Compose cluster publishing the same ports
        squatter.bind(("127.0.0.1", base + 3))
        squatter.listen()
        with pytest.raises(RuntimeError, match=rf"port {base + 3} on 127.0.0.1 is taken .*`make down`"):
            local_cluster.start(str(tmp_path / "data"), base)
    assert not (tmp_path / "data").exists()  # nothing was spawned
