"""Snapshots and log compaction on a running cluster (one event loop): automatic snapshots,
restarts from snapshot + log, a wiped follower restored from the leader's snapshot, the
admin and transfer endpoints, damaged snapshots."""

import asyncio
import json
import os

import pytest

from node import snapshot as snapshots
from node.app import open_node
from node.config import load_config
from node.log import iter_entries
from node.snapshot import SnapshotError
from tests.inprocess import wait_for

SECRET = {"X-Replication-Secret": "in-process-secret"}


def log_seqs(node) -> list[int]:
    return sorted(e.seq for e in iter_entries(node.log.path))


def states(cluster) -> dict[str, dict]:
    return {name: node.store.export() for name, node in cluster.nodes.items()}


async def write_many(cluster, count: int, start: int = 0, keys: int = 7) -> None:
    for first in range(start, start + count, 20):
        await asyncio.gather(*(cluster.write(f"k{i % keys}", i) for i in range(first, min(first + 20, start + count))))


async def admin(cluster, name: str, method: str, path: str, body: bytes = b"", headers=SECRET):
    response = await cluster.client.fetch(f"http://{cluster.address(name)}{path}", method=method,
                                          body=body if method == "POST" else None, headers=headers,
                                          raise_error=False, request_timeout=30)
    return response


async def settled_everywhere(cluster, timeout: float = 20.0) -> None:
    """Every node applied the leader's last seq and took the snapshot it is due."""
    await cluster.settled(timeout)
    leader = cluster.nodes["leader"]
    await wait_for(lambda: all(n.compactor._task is None for n in cluster.nodes.values()), timeout)
    assert len({repr(sorted(s.items())) for s in states(cluster).values()}) == 1, "states differ"
    assert all(n.store.applied_seq == leader.last_seq for n in cluster.nodes.values())


@pytest.mark.gen_test(timeout=90)
async def test_snapshots_bound_every_log_and_the_leaders_memory(make_cluster):
    async with make_cluster(SNAPSHOT_EVERY="50", RETAIN_ENTRIES="10", MAX_DELAY="5") as cluster:
        await write_many(cluster, 400)
        await settled_everywhere(cluster)
        leader = cluster.nodes["leader"]
        for name, node in cluster.nodes.items():
            base = node.compactor.base_seq
            assert base >= 300, (name, base)  # snapshots were taken as writes came in
            assert len(snapshots.paths(node.config.data_dir)) <= 2
            # The log keeps what follows the previous snapshot (the fallback), not the history.
            assert len(log_seqs(node)) <= 400 - node.compactor.previous_seq, name
            assert min(log_seqs(node), default=base + 1) > node.compactor.previous_seq
        assert len(leader.role_obj.core.entries) <= 50 + 10 + 20  # not 400
        status = (await cluster.request("leader", "GET", "/status"))[1]
        assert status["snapshot"]["seq"] == leader.compactor.base_seq and status["snapshot"]["taken"] >= 6
        assert status["first_kept_seq"] == leader.role_obj.core.first_seq > 300


@pytest.mark.gen_test(timeout=90)
async def test_a_restart_loads_the_snapshot_and_replays_only_the_log_after_it(make_cluster):
    async with make_cluster(SNAPSHOT_EVERY="40", RETAIN_ENTRIES="5", MAX_DELAY="5") as cluster:
        await write_many(cluster, 230)
        await settled_everywhere(cluster)
        before = states(cluster)
        for name in ("follower2", "leader"):
            await cluster.stop(name)
            await cluster.start(name)
            node = cluster.nodes[name]
            assert node.compactor.base_seq > 150 and node.store.export() == before[name], name
        answer = await cluster.write("after", "restart")
        assert answer["seq"] == 231  # numbering goes on after the snapshot and the log
        await settled_everywhere(cluster)


@pytest.mark.gen_test(timeout=120)
async def test_a_wiped_follower_is_restored_from_the_leaders_snapshot_under_load(make_cluster):
    async with make_cluster(SNAPSHOT_EVERY="50", RETAIN_ENTRIES="10", MAX_DELAY="5") as cluster:
        await write_many(cluster, 120)
        await settled_everywhere(cluster)
        follower = cluster.nodes["follower3"]
        data_dir = follower.config.data_dir
        await cluster.stop("follower3")
        for root, _, files in os.walk(data_dir):
            for name in files:
                os.remove(os.path.join(root, name))
        load = asyncio.ensure_future(write_many(cluster, 200, start=120))
        await cluster.start("follower3")
        await load
        await settled_everywhere(cluster)
        restored = cluster.nodes["follower3"]
        assert restored.compactor.installed_count >= 1  # started from the leader's snapshot, not from seq 1
        assert restored.compactor.base_seq >= 100
        assert min(log_seqs(restored)) > 1
        leader_status = (await cluster.request("leader", "GET", "/status"))[1]
        follower3 = [f for f in leader_status["followers"].values() if f["node_id"] == "follower3"][0]
        assert follower3["installing_snapshot"] is False  # a full follower again once it pulled from the log


@pytest.mark.gen_test(timeout=90)
async def test_a_short_outage_heals_from_the_log_the_leader_kept(make_cluster):
    async with make_cluster(SNAPSHOT_EVERY="30", RETAIN_ENTRIES="1000", MAX_DELAY="5") as cluster:
        await write_many(cluster, 40)
        await settled_everywhere(cluster)
        await cluster.stop("follower1")
        await write_many(cluster, 100, start=40)  # snapshots are taken meanwhile
        assert cluster.nodes["leader"].compactor.base_seq >= 120
        await cluster.start("follower1")
        await settled_everywhere(cluster)
        node = cluster.nodes["follower1"]
        assert not any("incoming" in n for n in os.listdir(snapshots.directory_in(node.config.data_dir)))
        assert node.compactor.installed_count == 0  # the log healed it: no snapshot needed


@pytest.mark.gen_test(timeout=60)
async def test_admin_snapshot_takes_one_now_and_refuses_bad_requests_changing_nothing(make_cluster):
    async with make_cluster(SNAPSHOT_EVERY="0", MAX_DELAY="5") as cluster:  # never automatic
        await write_many(cluster, 30)
        await cluster.settled()
        leader = cluster.nodes["leader"]
        for headers, body, status in (({}, b"", 403), (SECRET, b"[1]", 400), (SECRET, b'{"x": 1}', 400),
                                      (SECRET, b"{", 400)):
            response = await admin(cluster, "leader", "POST", "/admin/snapshot", body, headers)
            assert response.code == status and b"error" in response.body
        assert leader.compactor.base_seq == 0 and snapshots.paths(leader.config.data_dir) == []
        response = await admin(cluster, "leader", "POST", "/admin/snapshot", b"{}")
        assert response.code == 200, response.body
        answer = json.loads(response.body)
        # The first snapshot drops nothing from the log: it is the fallback if the next is damaged.
        assert answer["taken"] is True and answer["seq"] == 30 and answer["log_bytes_after"] == answer["log_bytes_before"]
        again = json.loads((await admin(cluster, "leader", "POST", "/admin/snapshot")).body)
        assert again["taken"] is False and "nothing committed since" in again["reason"]
        await write_many(cluster, 30, start=30)
        await cluster.settled()
        second = json.loads((await admin(cluster, "leader", "POST", "/admin/snapshot")).body)
        assert second["seq"] == 60 and second["log_bytes_after"] < second["log_bytes_before"]
        assert log_seqs(leader) == list(range(31, 61))
        follower = json.loads((await admin(cluster, "follower4", "POST", "/admin/snapshot")).body)
        # A follower snapshots only what it knows committed (an applied entry beyond may be rolled back).
        assert follower["taken"] is True and 30 < follower["seq"] <= cluster.nodes["follower4"].known_committed


@pytest.mark.gen_test(timeout=60)
async def test_the_snapshot_endpoint_streams_the_file_and_guards_it(make_cluster):
    async with make_cluster(SNAPSHOT_EVERY="0", MAX_DELAY="5") as cluster:
        await write_many(cluster, 10)
        assert (await admin(cluster, "leader", "GET", "/snapshot")).code == 404
        await admin(cluster, "leader", "POST", "/admin/snapshot")
        assert (await admin(cluster, "leader", "GET", "/snapshot", headers={})).code == 403
        assert (await admin(cluster, "leader", "GET", "/snapshot?node_id=nobody")).code == 400
        response = await admin(cluster, "leader", "GET", "/snapshot")
        assert response.code == 200 and response.headers["X-Snapshot-Seq"] == "10"
        found = snapshots.decode("GET /snapshot", response.body)
        assert found.seq == 10 and found.data == cluster.nodes["leader"].store.export()


@pytest.mark.gen_test(timeout=60)
async def test_a_cut_transfer_leaves_the_follower_as_it_was(make_cluster):
    async with make_cluster(SNAPSHOT_EVERY="0", MAX_DELAY="5") as cluster:
        await write_many(cluster, 10)
        await cluster.settled()
        await admin(cluster, "leader", "POST", "/admin/snapshot")
        body = (await admin(cluster, "leader", "GET", "/snapshot")).body
        follower = cluster.nodes["follower2"]
        before, seqs = follower.store.export(), log_seqs(follower)
        partial = os.path.join(snapshots.directory_in(follower.config.data_dir), "incoming.tmp")
        os.makedirs(os.path.dirname(partial), exist_ok=True)
        with open(partial, "wb") as f:
            f.write(body[: len(body) // 2])
        with pytest.raises(SnapshotError, match="damaged"):
            await follower.install_snapshot(partial)
        assert follower.store.export() == before and log_seqs(follower) == seqs
        assert snapshots.paths(follower.config.data_dir) == []


def node_env(cluster, name: str) -> dict:
    return cluster.env(name)


@pytest.mark.gen_test(timeout=60)
async def test_a_damaged_newest_snapshot_falls_back_to_the_older_one_and_the_log_after_it(make_cluster):
    async with make_cluster(SNAPSHOT_EVERY="0", MAX_DELAY="5") as cluster:
        await write_many(cluster, 10)
        await admin(cluster, "leader", "POST", "/admin/snapshot")
        await write_many(cluster, 10, start=10)
        await admin(cluster, "leader", "POST", "/admin/snapshot")
        await write_many(cluster, 5, start=20)
        expected = cluster.nodes["leader"].store.export()
        await cluster.stop("leader")
        newest, older = snapshots.paths(str(cluster.tmp_path / "leader"))
        with open(newest, "r+b") as f:
            f.seek(-4, os.SEEK_END)
            f.write(b"XXXX")
        await cluster.start("leader")
        leader = cluster.nodes["leader"]
        assert leader.compactor.base_seq == 10 and leader.store.export() == expected
        assert leader.last_seq == 25


def test_a_node_whose_snapshots_are_all_damaged_refuses_to_start_naming_the_file(tmp_path, make_cluster):
    cluster = make_cluster(followers=1)
    data_dir = tmp_path / "follower1"
    path = snapshots.write(str(data_dir), snapshots.Snapshot(5, 1, ((1, 1, "leader"),), {"k": [1, 5]}))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 3)
    with pytest.raises(SnapshotError) as refused:
        open_node(load_config(node_env(cluster, "follower1")))
    message = str(refused.value)
    assert path in message and "damaged" in message and "\n" not in message
