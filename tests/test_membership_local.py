"""Membership changes on the local six-process cluster, under load, with history checks: a new
follower joins (LEADER, no PEERS) and a follower is removed while writes go on, with log
compaction on, then the leader is SIGKILLed and a follower promoted right after the change."""

from __future__ import annotations

import os
import uuid

import pytest

from node import cluster as local_cluster
from node.admin import call
from node.logtool import compare_logs
from tests.failover_support import converged, health, states, wait_until
from tests.history import Load, check, record
from tests.net import free_port_block
from tests.test_faults_local import Cluster

pytestmark = pytest.mark.cluster

SECRET = "local-secret"


class Joiner:
    """follower6, started as an operator would: its peers come from the cluster (LEADER)."""

    def __init__(self, cluster) -> None:
        self.port = free_port_block(1)
        self.address = f"127.0.0.1:{self.port}"
        env = {k: v for k, v in cluster.envs["follower1"].items() if k != "PEERS"}
        self.env = dict(env, NODE_ID="follower6", ROLE="follower", PORT=str(self.port),
                        DATA_DIR=os.path.join(cluster.data_dir, "follower6"), LEADER=f"127.0.0.1:{cluster.base}")
        self.proc = local_cluster.spawn(self.env, quiet=True)
        local_cluster.wait_healthy(self.port, self.proc, 30)

    def stop(self) -> None:
        local_cluster.stop([self.proc])


class Nodes:
    """The members the history is checked on: the cluster's, follower5 out, follower6 in."""

    def __init__(self, cluster, joiner) -> None:
        self.cluster, self.joiner = cluster, joiner

    def url(self, name):
        return f"http://{self.joiner.address}" if name == "follower6" else self.cluster.url(name)


def promoted_and_committed(cluster) -> bool:
    """One change at a time: the next waits until the learner's promotion is committed."""
    members = call("GET", cluster.url("leader") + "/admin/members", SECRET)[1]
    return "follower6" in members["voters"] and members["committed"]


def change(cluster, url, body):
    code, answer = call("POST", url + "/admin/members", SECRET, body=body)
    assert code == 200, answer
    return answer


def test_a_follower_joins_and_one_leaves_under_load_then_a_failover_loses_nothing(tmp_path):
    cluster = Cluster(tmp_path, SNAPSHOT_EVERY="40", RETAIN_ENTRIES="10", WRITE_QUORUM="2")
    joiner = None
    try:
        prefix = f"members-{uuid.uuid4().hex[:6]}-"
        urls = [cluster.url(n) for n in ["leader"] + [f"follower{i}" for i in range(1, 6)]]
        load_ = Load(urls[0], prefix, count=300, concurrency=8, max_seconds=90, request_timeout=5,
                     addresses=urls).start()
        try:
            load_.wait_completed(50)
            joiner = Joiner(cluster)
            change(cluster, cluster.url("leader"), {"add": {"node_id": "follower6", "address": joiner.address}})
            nodes = Nodes(cluster, joiner)
            wait_until(lambda: promoted_and_committed(cluster), 30, "follower6 caught up, promoted, the change committed")
            load_.wait_completed(150)
            change(cluster, cluster.url("leader"), {"remove": "follower5"})
            load_.wait_completed(180)
            cluster.kill("leader")  # a failover right after the membership change
            code, answer = call("POST", cluster.url("follower2") + "/admin/promote", SECRET)
            assert code == 200, answer
        finally:
            result = load_.join()
        cluster.restart("leader")  # rejoins as a follower of term 2
        members = ["follower2", "leader", "follower1", "follower3", "follower4", "follower6"]
        wait_until(lambda: converged(nodes, members), 60, "every member converges")
        data = {n: s["data"] for n, s in states(nodes, members).items()}
        verdict = check(result, prefix, data)
        record("local: follower added, one removed, then a failover", verdict, 0.0)
        assert verdict.valid, (verdict.lost[:10], verdict.unexpected[:10], verdict.partial[:10])
        assert verdict.ok > 0
        logs = [os.path.join(cluster.data_dir, n, "replication.log") for n in members]
        assert compare_logs(logs)["equal"]
        for name in members:
            assert (health(nodes, name)["leader_id"], health(nodes, name)["term"]) == ("follower2", 2), name
        in_force = call("GET", nodes.url("follower6") + "/admin/members", SECRET)[1]
        assert "follower5" not in [m["node_id"] for m in in_force["members"]] and "follower6" in in_force["voters"]
    finally:
        if joiner is not None:
            joiner.stop()
        cluster.stop()
