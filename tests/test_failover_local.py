"""Leader failure on the local six-process cluster, under load, with history checks: the leader
SIGKILLed or paused while a follower is promoted (``POST /admin/promote``), then back."""

from __future__ import annotations

import glob
import os
import time
import uuid

import pytest

from node.admin import call
from node.log import read_log
from node.logtool import compare_logs
from tests.failover_support import converged, health, states, wait_until
from tests.history import Load, check, record
from tests.test_faults_local import NAMES, Cluster

pytestmark = pytest.mark.cluster

SECRET = "local-secret"


def promote(cluster, name):
    code, answer = call("POST", cluster.url(name) + "/admin/promote", SECRET)
    assert code == 200, answer
    return answer






def rolled_back_entries(cluster):
    files = glob.glob(os.path.join(cluster.data_dir, "*", "rollback", "*.log"))
    return [r.entry for f in files for r in read_log(f).records]


def first_acknowledged_after(load_, started):
    """Seconds from ``started`` (monotonic) to the first write the new term acknowledged."""
    done = [op for op in load_.result.ops if op.status == "ok" and op.term and op.term > 1 and op.finished_at]
    return min(op.finished_at for op in done) - started if done else float("nan")


def settle(cluster, name, result, prefix, new_leader, started, note=""):
    began = time.monotonic()
    wait_until(lambda: converged(cluster), 60, "every node converges")
    converge_s = time.monotonic() - began
    data = {n: s["data"] for n, s in states(cluster).items()}
    verdict = check(result, prefix, data)
    rolled = [e for e in rolled_back_entries(cluster) if e.key and e.key.startswith(prefix)]
    acknowledged = {op.key for op in result.ops if op.status == "ok"}
    record(f"local: {name}", verdict, converge_s, note, rolled_back=len(rolled),
           first_write_s=first_acknowledged_after(result_holder[0], started) if result_holder else "")
    assert verdict.valid, (verdict.lost[:10], verdict.unexpected[:10], verdict.partial[:10])
    assert not acknowledged & {e.key for e in rolled if data[new_leader].get(e.key) != e.value}, \
        "an acknowledged write was rolled back"
    assert compare_logs([os.path.join(cluster.data_dir, n, "replication.log") for n in NAMES])["equal"]
    for n in NAMES:
        assert (health(cluster, n)["leader_id"], health(cluster, n)["term"]) == (new_leader, 2), n
    return verdict, rolled


result_holder: list = []


def run_load(cluster, prefix, count=200):
    urls = [cluster.url(n) for n in NAMES]
    load_ = Load(urls[0], prefix, count=count, concurrency=8, max_seconds=60, request_timeout=5, addresses=urls)
    result_holder[:] = [load_]
    return load_.start()


@pytest.mark.parametrize("quorum", [1, 3, 5])
def test_leader_sigkilled_then_a_follower_promoted_loses_no_acknowledged_write(tmp_path, quorum):
    cluster = Cluster(tmp_path, WRITE_QUORUM=str(quorum))
    try:
        prefix = f"kill-{quorum}-{uuid.uuid4().hex[:6]}-"
        load_ = run_load(cluster, prefix)
        try:
            load_.wait_completed(50)
            cluster.kill("leader")
            started = time.monotonic()
            answer = promote(cluster, "follower3")
            assert answer["term"] == 2 and answer["deposed"] == "leader"
            if quorum == 5:  # W=5 needs the old leader back as a follower before any write
                cluster.restart("leader")
            load_.wait_completed(150)
            if quorum < 5:
                cluster.restart("leader")
        finally:
            result = load_.join()
        wait_until(lambda: health(cluster, "leader").get("role") == "follower", 30, "the old leader follows")
        verdict, _ = settle(cluster, f"SIGKILL leader, promote (W={quorum})", result, prefix, "follower3", started)
        assert any(op.status == "ok" and op.term == 2 for op in result.ops), "the new leader acknowledged nothing"
        assert verdict.ok > 0
    finally:
        cluster.stop()


def test_a_paused_leader_cannot_acknowledge_after_a_promotion_and_rolls_back(tmp_path):
    cluster = Cluster(tmp_path, WRITE_QUORUM="3")
    try:
        prefix = f"pause-{uuid.uuid4().hex[:6]}-"
        load_ = run_load(cluster, prefix)
        try:
            load_.wait_completed(50)
            cluster.pause("leader")
            started = time.monotonic()
            promote(cluster, "follower2")
            load_.wait_completed(120)
            cluster.resume("leader")  # it serves what was queued while paused, in term 1
            wait_until(lambda: health(cluster, "leader").get("role") == "follower", 30, "the old leader steps down")
        finally:
            result = load_.join()
        # settle() checks what matters here: every acknowledged write is on every node, and a
        # rolled-back entry that was acknowledged is one the new leader kept (written again in
        # its term at the same seq: the old leader's term-1 copy is what its rollback file holds).
        settle(cluster, "SIGSTOP leader, promote, SIGCONT", result, prefix, "follower2", started)
    finally:
        cluster.stop()


def test_a_whole_cluster_restart_after_a_failover_keeps_the_new_leader(tmp_path):
    cluster = Cluster(tmp_path, WRITE_QUORUM="2")
    try:
        assert call("POST", cluster.url("leader") + "/write", None)[0] in (400, 411)  # sanity: nodes answer
        for i in range(10):
            assert _write(cluster, "leader", f"a{i}", i)[0] == 200
        cluster.kill("leader")
        promote(cluster, "follower4")
        for i in range(10):
            assert _write(cluster, "follower4", f"b{i}", i)[0] == 200
        cluster.restart("leader")
        wait_until(lambda: converged(cluster), 30, "every node converges")
        cluster.stop()
        cluster.start()
        for n in NAMES:
            wait_until(lambda n=n: health(cluster, n)["leader_id"] == "follower4", 30, f"{n} knows the leader")
        assert health(cluster, "follower4")["role"] == "leader" and health(cluster, "leader").get("role") == "follower"
        assert _write(cluster, "follower4", "c", 1)[1]["term"] == 2
        code, answer = _write(cluster, "leader", "d", 1)
        assert code == 421 and answer["leader_id"] == "follower4"
        wait_until(lambda: converged(cluster), 30, "every node converges")
        data = states(cluster)["leader"]["data"]
        assert all(data[f"a{i}"] == i and data[f"b{i}"] == i for i in range(10)) and data["c"] == 1
    finally:
        cluster.stop()


def _write(cluster, name, key, value):
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(cluster.url(name) + "/write", method="POST",
                                     data=json.dumps({"key": key, "value": value}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
