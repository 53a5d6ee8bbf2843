"""Leader failure on the in-process cluster: promotion, fencing, rejoin with rollback."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import subprocess
import sys

import pytest
from tornado.httpclient import AsyncHTTPClient

from node.log import read_log

SECRET = {"X-Replication-Secret": "in-process-secret"}


async def promote(cluster, name):
    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(f"http://{cluster.address(name)}/admin/promote", method="POST", body=b"",
                                      headers=SECRET, raise_error=False, request_timeout=30)
    finally:
        client.close()
    return response.code, json.loads(response.body)


async def wait_for(condition, timeout=20.0, what="condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        await asyncio.sleep(0.02)


async def converged(cluster, names):
    statuses = [(await cluster.request(n, "GET", "/all"))[1] for n in names]
    return all(s["data"] == statuses[0]["data"] and s["applied_seq"] == statuses[0]["applied_seq"] for s in statuses)


COMPACTING = {"SNAPSHOT_EVERY": "7", "RETAIN_ENTRIES": "3"}  # two snapshots in 20 writes, on every node


@pytest.mark.parametrize("quorum, compaction", [(1, {}), (3, {}), (5, {}), (3, COMPACTING)],
                         ids=["W=1", "W=3", "W=5", "W=3, logs compacted"])
@pytest.mark.gen_test(timeout=90)
async def test_leader_lost_then_a_follower_promoted_keeps_every_acknowledged_write(make_cluster, quorum, compaction):
    async with make_cluster(WRITE_QUORUM=str(quorum), MAX_DELAY="30", **compaction) as cluster:
        acknowledged = {}
        for i in range(20):
            status, answer = await cluster.request("leader", "POST", "/write", {"key": f"k{i}", "value": i})
            assert status == 200 and answer["term"] == 1
            acknowledged[f"k{i}"] = i
        await cluster.stop("leader")
        status, answer = await promote(cluster, "follower3")
        assert status == 200, answer
        assert answer["term"] == 2 and answer["deposed"] == "leader" and len(answer["promises"]) >= answer["needed"]
        health = (await cluster.request("follower1", "GET", "/health"))[1]
        status, answer = await cluster.request("follower3", "POST", "/write", {"key": "after", "value": 1})
        if quorum < 5:  # W=5 needs all five followers of term 2, the old leader included
            assert status == 200 and answer["term"] == 2 and answer["seq"] > 20, answer
            acknowledged["after"] = 1
        await cluster.start("leader")  # comes back as a follower of term 2
        await wait_for(lambda: _role_is(cluster, "leader", "follower"), what="old leader steps down")
        if quorum == 5:
            status, answer = await cluster.request("follower3", "POST", "/write", {"key": "after", "value": 1})
            assert status == 200 and answer["term"] == 2, answer
            acknowledged["after"] = 1
        names = list(cluster.nodes)
        await wait_for(lambda: converged(cluster, names), what="every node converges")
        data = (await cluster.request("leader", "GET", "/all"))[1]["data"]
        assert all(data.get(k) == v for k, v in acknowledged.items())
        for name in names:
            health = (await cluster.request(name, "GET", "/health"))[1]
            assert (health["term"], health["leader_id"]) == (2, "follower3"), (name, health)
        if compaction:  # the promotion and the rejoin started from snapshots, not from seq 1
            assert all(node.compactor.base_seq > 0 for node in cluster.nodes.values())


async def _role_is(cluster, name, role):
    return (await cluster.request(name, "GET", "/health"))[1]["role"] == role


@pytest.mark.gen_test(timeout=60)
async def test_a_write_to_a_node_that_does_not_lead_names_the_leader_after_a_promotion(make_cluster):
    async with make_cluster(MAX_DELAY="5") as cluster:
        await cluster.write("a", 1)
        await cluster.stop("leader")
        assert (await promote(cluster, "follower2"))[0] == 200

        async def knows_the_new_leader():
            return (await cluster.request("follower4", "GET", "/health"))[1]["leader_id"] == "follower2"

        await wait_for(knows_the_new_leader, what="follower4 hears from the new leader")
        status, answer = await cluster.request("follower4", "POST", "/write", {"key": "b", "value": 2})
        assert status == 421 and answer["leader_id"] == "follower2" and answer["term"] == 2
        assert answer["leader_address"] == cluster.address("follower2")
        assert (await cluster.request("follower4", "GET", "/read/b"))[0] == 404  # changed nothing


@pytest.mark.gen_test(timeout=60)
async def test_promotion_without_enough_reachable_followers_is_refused_and_changes_nothing(make_cluster):
    async with make_cluster(WRITE_QUORUM="2", MAX_DELAY="5") as cluster:
        await cluster.write("a", 1)
        await cluster.stop("leader")
        for name in ("follower1", "follower2", "follower4"):  # N - W + 1 = 4 needed; 2 left
            await cluster.stop(name)
        before = (await cluster.request("follower3", "GET", "/status"))[1]
        status, answer = await promote(cluster, "follower3")
        assert status == 503 and answer["answered"] == 2 and answer["needed"] == 4, answer
        assert "2 of the 5 followers" in answer["error"]
        after = (await cluster.request("follower3", "GET", "/status"))[1]
        assert (after["term"], after["role"], after["applied_seq"]) == (before["term"], "follower", before["applied_seq"])
        assert (await cluster.request("follower5", "GET", "/status"))[1]["term"] == before["term"]


@pytest.mark.gen_test(timeout=60)
async def test_a_deposed_leader_rolls_back_what_it_took_after_the_promotion(make_cluster, tmp_path, monkeypatch):
    """The old leader is cut off (nothing it sends arrives, the candidate cannot reach it) while
    follower1 is promoted; a write it takes then is never acknowledged, ends in its rollback
    file, and it converges to the new leader once the cut heals."""
    from node.leader import LeaderStopping, WriteTimeout
    from node.replica import Promotion

    async with make_cluster(WRITE_QUORUM="3", MAX_DELAY="5", WRITE_TIMEOUT="300") as cluster:
        await cluster.write("before", 1)
        await cluster.settled()
        old = cluster.nodes["leader"]
        real_client, old.role_obj.client = old.role_obj.client, _Unreachable()
        ask = Promotion._ask

        async def ask_except_the_old_leader(self, address, body):
            if address == cluster.address("leader"):
                return ConnectionRefusedError("cut off")
            return await ask(self, address, body)

        monkeypatch.setattr(Promotion, "_ask", ask_except_the_old_leader)
        status, answer = await promote(cluster, "follower1")
        assert status == 200 and answer["deposed"] == "leader", answer
        assert old.role == "leader"  # it has heard nothing yet
        with pytest.raises((WriteTimeout, LeaderStopping)) as unanswered:
            await old.write("set", "lost", 1)  # at most W - 1 = 2 followers could confirm it
        assert unanswered.value.confirmations < 3
        old.role_obj.client = real_client  # the cut heals
        await wait_for(lambda: _role_is(cluster, "leader", "follower"), what="old leader steps down")
        await wait_for(lambda: converged(cluster, list(cluster.nodes)), what="every node converges")
        assert (await cluster.request("leader", "GET", "/read/lost"))[0] == 404
        assert (await cluster.request("leader", "GET", "/read/before"))[1]["value"] == 1
        files = glob.glob(os.path.join(str(tmp_path), "leader", "rollback", "*.log"))
        rolled = [r.entry for f in files for r in read_log(f).records]
        assert [(e.key, e.term) for e in rolled] == [("lost", 1)]
        shown = subprocess.run([sys.executable, "-m", "node.logtool", "show", files[0]], capture_output=True,
                               text=True, timeout=30)
        assert shown.returncode == 0 and "seq=2" in shown.stdout and "key='lost'" in shown.stdout, shown


class _Unreachable:
    """Stands in for the leader's HTTP client while it is cut off: every request fails."""

    def fetch(self, request, raise_error=True, **_):
        future = asyncio.get_running_loop().create_future()
        future.set_exception(ConnectionRefusedError("cut off"))
        return future

    def close(self):
        pass


@pytest.mark.gen_test(timeout=60)
async def test_a_push_or_pull_of_an_older_term_is_refused_and_changes_nothing(make_cluster):
    async with make_cluster(MAX_DELAY="5") as cluster:
        await cluster.write("a", 1)
        await cluster.stop("leader")
        assert (await promote(cluster, "follower2"))[0] == 200
        assert (await cluster.request("follower2", "POST", "/write", {"key": "b", "value": 2}))[0] == 200
        before = (await cluster.request("follower4", "GET", "/status"))[1]
        stale = {"term": 1, "leader_id": "leader", "history": [[1, 1, "leader"]], "committed": 0,
                 "entries": [{"seq": before["applied_seq"] + 1, "op": "set", "key": "forged", "value": 1, "ts": 0.0,
                              "term": 1}]}
        client = AsyncHTTPClient(force_instance=True)
        try:
            push = await client.fetch(f"http://{cluster.address('follower4')}/replicate", method="POST",
                                      body=json.dumps(stale), headers=SECRET, raise_error=False)
            pull = await client.fetch(f"http://{cluster.address('follower2')}/log?after=0&term=1&node_id=leader",
                                      headers=SECRET, raise_error=False)
        finally:
            client.close()
        for answer in (push, pull):
            body = json.loads(answer.body)
            assert answer.code == 409 and body["term"] == 2 and "older" in body["error"], body
        assert json.loads(pull.body)["leader_id"] == "follower2"
        after = (await cluster.request("follower4", "GET", "/status"))[1]
        assert (after["term"], after["applied_seq"]) == (2, before["applied_seq"])
        assert (await cluster.request("follower4", "GET", "/read/forged"))[0] == 404


@pytest.mark.gen_test(timeout=60)
async def test_a_candidate_that_is_behind_fetches_what_its_promisers_hold(make_cluster):
    async with make_cluster(WRITE_QUORUM="2", MAX_DELAY="5") as cluster:
        await cluster.write("early", 0)
        await cluster.settled()
        await cluster.stop("follower3")
        written = {f"k{i}": i for i in range(10)}
        for key, value in written.items():
            assert (await cluster.write(key, value))["success"]
        await cluster.stop("leader")
        await cluster.start("follower3")  # no leader to pull from: it holds only "early"
        status, answer = await promote(cluster, "follower3")
        assert status == 200 and answer["fetched"] >= 10, answer
        data = (await cluster.request("follower3", "GET", "/all"))[1]["data"]
        assert all(data[key] == value for key, value in written.items()) and data["early"] == 0


@pytest.mark.gen_test(timeout=60)
async def test_an_entry_past_a_seq_nobody_holds_is_kept_in_the_new_term(make_cluster, tmp_path):
    """Writes are confirmed one by one, so seq 3 can be acknowledged while seq 2 reached nobody.
    The new leader keeps seq 3 (written again in its term, same seq), fills seq 2 with a no-op,
    and starts its term after them; the followers that held seq 3 in term 1 end equal to it."""
    async with make_cluster(WRITE_QUORUM="3", MAX_DELAY="5") as cluster:
        await cluster.write("one", 1)
        await cluster.settled()
        await cluster.stop("leader")
        three = {"seq": 3, "op": "set", "key": "three", "value": 3, "ts": 0.0, "term": 1}
        push = {"term": 1, "leader_id": "leader", "history": [[1, 1, "leader"]], "committed": 1, "entries": [three]}
        client = AsyncHTTPClient(force_instance=True)
        try:
            for name in ("follower1", "follower2", "follower5"):  # W = 3 held seq 3; nobody holds seq 2
                response = await client.fetch(f"http://{cluster.address(name)}/replicate", method="POST",
                                              body=json.dumps(push), headers=SECRET)
                assert json.loads(response.body)["applied_seq"] == 1
        finally:
            client.close()
        status, answer = await promote(cluster, "follower4")
        assert status == 200 and answer["holes"] == [2] and answer["restamped"] == 2, answer
        assert answer["term_start_seq"] == 4
        await cluster.start("leader")
        await wait_for(lambda: converged(cluster, list(cluster.nodes)), what="every node converges")
        data = (await cluster.request("follower1", "GET", "/all"))[1]
        assert data["data"] == {"one": 1, "three": 3} and data["applied_seq"] >= 4
        entries = {r.entry.seq: r.entry for r in read_log(str(tmp_path / "follower4" / "replication.log")).records}
        assert (entries[2].op, entries[2].term) == ("noop", 2)
        assert (entries[3].key, entries[3].value, entries[3].term) == ("three", 3, 2)
        assert entries[4].op == "noop" and entries[4].value["term_start"] == 2
