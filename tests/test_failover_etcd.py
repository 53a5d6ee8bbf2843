"""Automatic failover on the local six-process cluster with a real etcd as the coordinator:
the leader SIGKILLed or cut off from etcd under load, failover paused, failover off."""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from node.admin import call
from node.etcd_local import start_etcd
from tests.failover_support import NAMES, converged, failover_status, health, leader_now, require_etcd, states, wait_until
from tests.history import check, record
from tests.test_failover_local import SECRET, rolled_back_entries, run_load
from tests.test_faults_local import Cluster

pytestmark = pytest.mark.cluster

TTL_MS = 2000


@pytest.fixture(scope="module")
def etcd():
    require_etcd("the automatic failover tests")
    running = start_etcd(1)
    yield running
    running.stop()


def coordinated(tmp_path, etcd, **settings):
    return Cluster(tmp_path, ETCD_ENDPOINTS=",".join(etcd.endpoints), LEADER_TTL=str(TTL_MS),
                   ETCD_PREFIX=f"/kv-{uuid.uuid4().hex[:8]}", **settings)




def wait_for_key(cluster, name):
    """Until ``name`` holds the key and every node has followed it (a node that never heard from
    a leader does not race, by design: see node.core.coordination.healthiest)."""
    wait_until(lambda: failover_status(cluster, name)["leader_key_holder"] == name, 20, f"{name} holds the key")
    wait_until(lambda: all(call("GET", cluster.url(n) + "/status", timeout=5)[1]["history"] for n in NAMES), 20,
               "every node follows the leader")


@pytest.mark.parametrize("quorum", [1, 3])
def test_the_leader_sigkilled_is_replaced_automatically_and_no_acknowledged_write_is_lost(tmp_path, etcd, quorum):
    cluster = coordinated(tmp_path, etcd, WRITE_QUORUM=str(quorum))
    try:
        wait_for_key(cluster, "leader")
        prefix = f"auto-{quorum}-{uuid.uuid4().hex[:6]}-"
        load_ = run_load(cluster, prefix)
        try:
            load_.wait_completed(50)
            cluster.kill("leader")
            killed = time.monotonic()
            followers = NAMES[1:]
            wait_until(lambda: leader_now(cluster, followers) is not None, 30, "a follower takes over by itself")
            new_leader = leader_now(cluster, followers)
            load_.wait_completed(150)
            cluster.restart("leader")
        finally:
            result = load_.join()
        wait_until(lambda: health(cluster, "leader").get("role") == "follower", 30, "the old leader follows")
        wait_until(lambda: converged(cluster), 60, "every node converges")
        data = {n: s["data"] for n, s in states(cluster).items()}
        verdict = check(result, prefix, data)
        rolled = [e for e in rolled_back_entries(cluster) if e.key and e.key.startswith(prefix)]
        new_term = [op.finished_at for op in result.ops if op.status == "ok" and op.term and op.term > 1]
        record(f"local etcd: leader SIGKILL, automatic (W={quorum})", verdict, 0.0, rolled_back=len(rolled),
               first_write_s=(min(new_term) - killed) if new_term else "none", note=f"to {new_leader}")
        assert verdict.valid, (verdict.lost[:10], verdict.unexpected[:10], verdict.partial[:10])
        assert new_term, "the automatic leader acknowledged nothing"
        last = failover_status(cluster, new_leader)["last_failover"]
        assert last["to"] == new_leader and last["from"] == "leader" and last["term"] >= 2
        other = next(n for n in NAMES[1:] if n != new_leader)
        wait_until(lambda: failover_status(cluster, other)["last_failover"] == last, 10,
                   f"{other} shows the same last failover, read from etcd")
        assert failover_status(cluster, new_leader)["leader_key_holder"] == new_leader
    finally:
        cluster.stop()


def test_a_leader_cut_off_from_etcd_stops_acknowledging_within_the_ttl(tmp_path, etcd):
    cluster = coordinated(tmp_path, etcd, WRITE_QUORUM="2")
    try:
        wait_for_key(cluster, "leader")
        assert _write(cluster, "leader", "before", 1)[0] == 200
        for proc in etcd.procs:
            proc.send_signal(signal.SIGSTOP)  # etcd answers nobody: the lease cannot be renewed
        try:
            cut = time.monotonic()
            wait_until(lambda: _write(cluster, "leader", f"k{time.monotonic()}", 1)[0] != 200, 10,
                       "the leader stops acknowledging")
            stopped_after = time.monotonic() - cut
            assert stopped_after < TTL_MS / 1000 + 1.0, stopped_after
        finally:
            for proc in etcd.procs:
                proc.send_signal(signal.SIGCONT)
        found = []

        def one_leader_with_the_key():
            leader = leader_now(cluster, NAMES)
            found[:] = [leader]
            if leader is None:
                return False
            status = failover_status(cluster, leader)
            return status["leader_key_holder"] == leader and status["lease_remaining_s"] > 0

        wait_until(one_leader_with_the_key, 30, "one leader again, holding the key")
        assert _write(cluster, found[0], "after", 2)[0] == 200
        wait_until(lambda: converged(cluster), 30, "every node converges")
        data = states(cluster)["follower1"]["data"]
        assert data["before"] == 1 and data["after"] == 2
    finally:
        cluster.stop()


def test_a_paused_failover_leaves_the_cluster_without_a_leader_until_resumed(tmp_path, etcd):
    cluster = coordinated(tmp_path, etcd, WRITE_QUORUM="2")
    try:
        wait_for_key(cluster, "leader")
        assert call("POST", cluster.url("follower1") + "/admin/pause", SECRET) == (200, {"paused": True})
        cluster.kill("leader")
        wait_until(lambda: "paused" in (failover_status(cluster, "follower2")["last_decision"] or ""), 15,
                   "the followers see the key gone and the pause")
        assert leader_now(cluster, NAMES[1:]) is None
        assert call("POST", cluster.url("follower3") + "/admin/resume", SECRET) == (200, {"paused": False})
        wait_until(lambda: leader_now(cluster, NAMES[1:]) is not None, 30, "a follower takes over once resumed")
    finally:
        cluster.stop()


def test_with_failover_manual_nobody_takes_over_but_a_promotion_takes_the_lock(tmp_path, etcd):
    cluster = coordinated(tmp_path, etcd, WRITE_QUORUM="2", FAILOVER="manual")
    try:
        wait_for_key(cluster, "leader")
        wait_until(lambda: failover_status(cluster, "follower4")["leader_key_holder"] == "leader", 15,
                   "follower4 sees the key")
        cluster.kill("leader")
        wait_until(lambda: failover_status(cluster, "follower4")["leader_key_holder"] is None, 15, "the key expires")
        wait_until(lambda: "FAILOVER=manual" in (failover_status(cluster, "follower4")["last_decision"] or ""), 15,
                   "nobody races")
        assert leader_now(cluster, NAMES[1:]) is None
        code, answer = call("POST", cluster.url("follower4") + "/admin/promote", SECRET)
        assert code == 200 and answer["term"] >= 2, answer
        assert failover_status(cluster, "follower4")["leader_key_holder"] == "follower4"
        assert _write(cluster, "follower4", "x", 1)[0] == 200
    finally:
        cluster.stop()


def _write(cluster, name, key, value):
    from tests.test_failover_local import _write as write

    try:
        return write(cluster, name, key, value)
    except OSError as exc:
        return 599, {"error": str(exc)}


def test_a_planned_switchover_moves_the_lock_under_load_without_losing_a_write(tmp_path, etcd):
    cluster = coordinated(tmp_path, etcd, WRITE_QUORUM="2")
    try:
        wait_for_key(cluster, "leader")
        prefix = f"switchover-{uuid.uuid4().hex[:6]}-"
        load_ = run_load(cluster, prefix)
        try:
            load_.wait_completed(50)
            code, answer = call("POST", cluster.url("follower2") + "/admin/promote", SECRET)
            assert code == 200 and answer["switchover_from"] == "leader", answer
            load_.wait_completed(150)
        finally:
            result = load_.join()
        assert failover_status(cluster, "follower2")["leader_key_holder"] == "follower2"
        wait_until(lambda: health(cluster, "leader").get("role") == "follower", 30, "the old leader follows")
        wait_until(lambda: converged(cluster), 60, "every node converges")
        verdict = check(result, prefix, {n: s["data"] for n, s in states(cluster).items()})
        rolled = [e for e in rolled_back_entries(cluster) if e.key and e.key.startswith(prefix)]
        record("local etcd: planned switchover leader -> follower2 (W=2)", verdict, 0.0, rolled_back=len(rolled))
        assert verdict.valid, (verdict.lost[:10], verdict.unexpected[:10], verdict.partial[:10])
        assert answer["term"] == max(op.term or 0 for op in result.ops if op.status == "ok")
    finally:
        cluster.stop()


def test_a_leader_killed_and_restarted_takes_its_key_back_in_its_own_term(tmp_path, etcd):
    cluster = coordinated(tmp_path, etcd, WRITE_QUORUM="2", FAILOVER="manual")
    try:
        wait_for_key(cluster, "leader")
        assert _write(cluster, "leader", "before", 1)[0] == 200
        term = health(cluster, "leader")["term"]
        cluster.kill("leader")  # the key stays, bound to the dead process's lease; nobody races (manual)
        cluster.restart("leader")
        wait_until(lambda: failover_status(cluster, "leader")["lease_remaining_s"] > 0, 15,
                   "the restarted leader holds the key again, with a lease of its own")
        code, answer = _write(cluster, "leader", "after", 2)
        assert code == 200 and answer["term"] == term, answer
    finally:
        cluster.stop()
