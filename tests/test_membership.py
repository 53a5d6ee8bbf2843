"""Membership changes on a running cluster (one event loop): a new node joins with LEADER, as a
learner first; a follower is removed; the membership survives restarts and snapshots."""

import asyncio
import json
import os

import pytest
from tornado.testing import bind_unused_port

from node.app import start_node, stop_node
from node.config import load_config
from node.join import with_peers_from_cluster
from tests.inprocess import wait_for

SECRET = {"X-Replication-Secret": "in-process-secret"}


async def members_call(cluster, name, change=None, headers=SECRET, raw=None):
    body = raw if raw is not None else (json.dumps(change).encode() if change is not None else None)
    response = await cluster.client.fetch(f"http://{cluster.address(name)}/admin/members",
                                          method="POST" if body is not None else "GET", body=body, headers=headers,
                                          raise_error=False, request_timeout=30)
    return response.code, json.loads(response.body)


async def join(cluster, name: str):
    """Start ``name`` with LEADER (no PEERS), as an operator would; return (node, server, address)."""
    sock, port = bind_unused_port()
    env = dict(cluster.settings, NODE_ID=name, ROLE="follower", HOST="127.0.0.1", PORT=str(port),
               DATA_DIR=str(cluster.tmp_path / name), LEADER=cluster.address("leader"))
    env = await asyncio.get_running_loop().run_in_executor(None, with_peers_from_cluster, env)
    node, server = await start_node(load_config(env), [sock])
    return node, server, f"127.0.0.1:{port}"


@pytest.mark.gen_test(timeout=90)
async def test_a_new_node_joins_as_a_learner_then_counts_and_a_removed_one_gets_no_more_sends(make_cluster):
    async with make_cluster(followers=3, WRITE_QUORUM="2", MAX_DELAY="5", SNAPSHOT_EVERY="25") as cluster:
        for i in range(40):
            await cluster.write(f"k{i % 5}", i)
        node, server, address = await join(cluster, "follower4")
        try:
            status, answer = await members_call(cluster, "leader", {"add": {"node_id": "follower4", "address": address}})
            assert status == 200, answer
            assert {"node_id": "follower4", "address": address, "learner": True} in answer["members"]
            assert answer["op"] == "members" and answer["confirmations"] >= 2
            leader = cluster.nodes["leader"]
            # Caught up (from the leader's snapshot: it compacted long ago), the learner is promoted.
            await wait_for(lambda: "follower4" in leader.voters("leader"))
            await cluster.write("after-join", 1)
            await wait_for(lambda: node.store.export() == leader.store.export())
            assert node.compactor.installed_count == 1 and node.members.voters("leader") == leader.members.voters("leader")
            removed = cluster.address("follower3")
            status, answer = await members_call(cluster, "leader", {"remove": "follower3"})
            assert status == 200 and "follower3" not in [m["node_id"] for m in answer["members"]], answer
            assert removed not in leader.role_obj.core.channels  # no more sends to it
            answer = await cluster.write("after-remove", 2)
            assert answer["confirmations"] >= 2
            # The membership is in the log (and the snapshots): a restarted leader has it.
            await cluster.stop("leader")
            await cluster.start("leader")
            restarted = cluster.nodes["leader"]
            assert restarted.voters("leader") == ["follower1", "follower2", "follower4"]
            assert restarted.config.address_of("follower4") == address
            answer = await cluster.write("after-restart", 3)
            await wait_for(lambda: node.store.get("after-restart") is not None)
        finally:
            await stop_node(node, server)


@pytest.mark.gen_test(timeout=60)
async def test_bad_membership_changes_are_refused_and_change_nothing(make_cluster):
    async with make_cluster(followers=3, WRITE_QUORUM="3", MAX_DELAY="5") as cluster:
        before = (await members_call(cluster, "leader"))[1]
        cases = [
            ({"add": {"node_id": "follower9", "address": "127.0.0.1:1"}}, {}, 403),
            (None, SECRET, 400, b"[1]"),
            ({"add": {"node_id": "follower9"}}, SECRET, 400),
            ({"add": {"node_id": "x y", "address": "127.0.0.1:9"}}, SECRET, 400),
            ({"add": {"node_id": "follower9", "address": "nowhere"}}, SECRET, 400),
            ({"add": {"node_id": "follower9", "address": "127.0.0.1:9"}, "remove": "follower1"}, SECRET, 400),
            ({"remove": 7}, SECRET, 400),
            ({"add": {"node_id": "follower1", "address": "127.0.0.1:9"}}, SECRET, 409),
            ({"add": {"node_id": "follower9", "address": cluster.address("follower2")}}, SECRET, 409),
            ({"remove": "leader"}, SECRET, 409),
            ({"remove": "follower1"}, SECRET, 409),  # W=3 of 3 followers
            ({"remove": "nobody"}, SECRET, 409),
        ]
        for case in cases:
            change, headers, expected = case[:3]
            status, answer = await members_call(cluster, "leader", change, headers, raw=case[3] if len(case) > 3 else None)
            assert status == expected and "error" in answer, (case, status, answer)
        status, answer = await members_call(cluster, "follower1", {"remove": "follower3"})
        assert status == 421 and answer["leader_id"] == "leader"
        assert (await members_call(cluster, "leader"))[1] == before
        assert (await members_call(cluster, "leader"))[1]["seq"] == 0  # nothing was written
