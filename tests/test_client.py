"""node.client: finding and following the leader, retrying only what is safe, bounded calls.

Against small fake nodes (a Tornado app per node that answers /health and scripted writes), so
that the answers a real cluster gives only during a leader change (421, 503 without outcome,
a node that stops mid-write) can be produced on demand; and against the real nodes in process.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from node.client import Client, ClientError, Leader
from node.client_rules import pick_leader, write_verdict

HANG = "hang"  # a scripted answer: never answer (the client's timeout decides)


class FakeNode:
    """One node that answers /health with ``health`` and each write with the next answer of
    ``writes`` (``(status, body)`` or HANG; the last one repeats); records every request."""

    def __init__(self, node_id: str, role: str = "follower", writes: list | None = None, **health: Any) -> None:
        self.health = {"status": "ok", "role": role, "node_id": node_id, **health}
        self.writes = list(writes or [(200, {"success": True, "seq": 1})])
        self.reads: list[tuple[int, dict]] = [(404, {"error": "not found", "found": False, "applied_seq": 0})]
        self.requests: list[tuple[str, str]] = []
        sock, port = bind_unused_port()
        self.address = f"127.0.0.1:{port}"
        self.server = HTTPServer(Application([(r".*", FakeHandler, {"node": self})]))
        self.server.add_sockets([sock])

    @property
    def write_requests(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] in ("POST", "DELETE")]

    def stop(self) -> None:
        self.server.stop()  # the port closes: connections are refused from now on


class FakeHandler(RequestHandler):
    def initialize(self, node: FakeNode) -> None:
        self.node = node

    async def answer(self, script: list) -> None:
        status_body = script.pop(0) if len(script) > 1 else script[0]
        if status_body == HANG:
            await asyncio.sleep(30)
            return
        status, body = status_body
        self.set_status(status)
        self.finish(body)

    async def get(self) -> None:
        self.node.requests.append(("GET", self.request.uri))
        if self.request.path == "/health":
            self.finish(self.node.health)
        else:
            await self.answer(self.node.reads)

    async def post(self) -> None:
        self.node.requests.append((self.request.method, self.request.uri))
        await self.answer(self.node.writes)

    delete = post


@pytest.fixture
def fakes(io_loop):  # stopped before the loop closes their sockets
    made: list[FakeNode] = []

    def make(*args, **kwargs) -> FakeNode:
        made.append(FakeNode(*args, **kwargs))
        return made[-1]

    yield make
    for node in made:
        node.stop()


def dead_address() -> str:
    sock, port = bind_unused_port()
    sock.close()
    return f"127.0.0.1:{port}"


OK = (200, {"success": True, "seq": 7, "term": 2})


# --- what an answer proves ---------------------------------------------------------------------


@pytest.mark.parametrize("code, answer, verdict", [
    (200, {"seq": 1}, "ok"),
    (421, {"error": "not the leader", "leader_id": "f3", "leader_address": "h:1", "term": 3}, "retry"),
    (403, {"error": "follower", "leader": "leader:8000"}, "retry"),
    (403, {"error": "missing secret"}, "fail"),
    (503, {"error": "promotion in progress"}, "retry"),
    (503, {"error": "leader stopping", "outcome": "unknown", "seq": 4}, "unknown"),
    (504, {"error": "quorum not reached", "seq": 4}, "unknown"),
    (500, {"error": "internal error"}, "unknown"),
    (400, {"error": "bad key"}, "fail"),
    (404, {"error": "nothing to delete"}, "fail"),
    (413, {"error": "too large"}, "fail"),
])
def test_write_verdicts(code, answer, verdict):
    assert write_verdict(code, answer) == verdict


def test_pick_leader_trusts_the_highest_term():
    stale = ("a:1", {"role": "leader", "node_id": "a", "term": 2})
    follower = ("b:1", {"role": "follower", "node_id": "b", "term": 3, "leader_id": "c", "leader_address": "c:1"})
    new = ("c:1", {"role": "leader", "node_id": "c", "term": 3})
    assert pick_leader([stale, follower, new]) == Leader("c", "c:1", 3)
    assert pick_leader([stale, follower]) == Leader("c", "c:1", 3)  # named by a node of the newest term
    assert pick_leader([stale]) == Leader("a", "a:1", 2)
    assert pick_leader([("b:1", {"role": "follower", "node_id": "b", "term": 3, "leader_id": None,
                                 "leader_address": None}), stale]) is None  # an election in progress
    assert pick_leader([("l:1", {"role": "leader", "node_id": "leader"})]) == Leader("leader", "l:1", None)  # no terms yet
    assert pick_leader([]) is None


# --- finding and following the leader ----------------------------------------------------------


@pytest.mark.gen_test
async def test_discovery_uses_the_leader_address_in_health(fakes):
    """The client knows one follower only; its /health names the leader."""
    leader = fakes("f3", role="leader", term=3, writes=[OK])
    follower = fakes("f1", term=3, leader_id="f3", leader_address=leader.address)
    client = Client([follower.address, dead_address()])
    try:
        assert await client.leader() == Leader("f3", leader.address, 3)
        result = await client.write("k", 1)
        assert (result.status, result.seq, result.term, result.leader) == ("ok", 7, 2, leader.address)
        assert follower.write_requests == [] and leader.write_requests == [("POST", "/write")]
    finally:
        client.close()


@pytest.mark.gen_test
async def test_a_stale_leader_loses_to_the_newer_term(fakes):
    stale = fakes("old", role="leader", term=1, writes=[(500, {"error": "must not be used"})])
    new = fakes("new", role="leader", term=2, writes=[OK])
    client = Client([stale.address, new.address])
    try:
        assert (await client.write("k", 1)).status == "ok"
        assert stale.write_requests == [] and len(new.write_requests) == 1
    finally:
        client.close()


@pytest.mark.parametrize("refusal", ["421", "403"])
@pytest.mark.gen_test
async def test_a_refused_write_follows_the_leader_it_names(fakes, refusal):
    new = fakes("f2", role="leader", term=4, writes=[OK])
    if refusal == "421":
        body = {"error": "not the leader", "leader_id": "f2", "leader_address": new.address, "term": 4}
    else:  # a follower of today's build
        body = {"error": "this node is a follower", "leader": new.address}
    old = fakes("f1", role="leader", term=3, writes=[(int(refusal), body)])
    client = Client([old.address])  # the new leader is not even among the known addresses
    try:
        result = await client.write("k", 1)
        assert (result.status, result.leader, result.attempts) == ("ok", new.address, 2)
        assert len(old.write_requests) == 1 and len(new.write_requests) == 1
        assert (await client.write("k", 2)).leader == new.address  # remembered
        assert len(old.write_requests) == 1
    finally:
        client.close()


@pytest.mark.gen_test
async def test_a_leader_that_is_gone_is_replaced_through_health(fakes):
    first = fakes("a", role="leader", term=1, writes=[OK])
    second = fakes("b", term=1)
    client = Client([first.address, second.address])
    try:
        assert (await client.write("k", 1)).leader == first.address
        first.stop()  # connections to it are now refused: nothing is sent
        second.health.update(role="leader", term=2)
        result = await client.write("k", 2)
        assert (result.status, result.leader) == ("ok", second.address)
        assert len(first.write_requests) == 1 and len(second.write_requests) == 1
    finally:
        client.close()


# --- retrying only what is safe ----------------------------------------------------------------


@pytest.mark.gen_test
async def test_503_without_outcome_is_retried(fakes):
    leader = fakes("l", role="leader", writes=[(503, {"error": "promotion in progress"}), OK])
    client = Client([leader.address])
    try:
        result = await client.write("k", 1)
        assert (result.status, result.seq, result.attempts) == ("ok", 7, 2)
        assert len(leader.write_requests) == 2
    finally:
        client.close()


@pytest.mark.parametrize("answer, code", [
    ((503, {"error": "the leader is shutting down", "outcome": "unknown", "seq": 3}), 503),
    ((504, {"error": "write quorum not reached", "success": False, "seq": 3}), 504),
    ((500, {"error": "internal error; see the node's log"}), 500),
    (HANG, None),
])
@pytest.mark.gen_test
async def test_a_write_that_may_have_been_applied_is_unknown_and_not_retried(fakes, answer, code):
    leader = fakes("l", role="leader", writes=[answer, OK])
    client = Client([leader.address], timeout=0.3)
    try:
        result = await client.write("k", 1)
        assert (result.status, result.code, result.attempts) == ("unknown", code, 1), result
        assert len(leader.write_requests) == 1  # exactly one copy was sent
        if code in (503, 504):
            assert result.seq == 3
        assert result.answer == (None if code is None else answer[1])  # the body that decided it
    finally:
        client.close()


@pytest.mark.parametrize("answer", [(400, {"error": "'key' must not be empty"}), (413, {"error": "too large"}),
                                    (404, {"error": "key 'k' not found; nothing to delete"})])
@pytest.mark.gen_test
async def test_a_refused_input_fails_at_once(fakes, answer):
    leader = fakes("l", role="leader", writes=[answer, OK])
    client = Client([leader.address])
    try:
        result = await client.delete("k")
        assert (result.status, result.code, result.error) == ("fail", answer[0], answer[1]["error"])
        assert leader.write_requests == [("DELETE", "/delete/k")]
    finally:
        client.close()


# --- bounded ------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_write_nobody_takes_fails_within_its_timeout(fakes):
    """A node that calls itself leader in /health but refuses every write naming no leader."""
    stuck = fakes("s", role="leader", writes=[(421, {"error": "stepping down", "leader_id": None,
                                                     "leader_address": None, "term": 5})])
    client = Client([stuck.address])
    try:
        started = time.monotonic()
        result = await client.write("k", 1, timeout=0.6)
        elapsed = time.monotonic() - started
        assert result.status == "fail" and "did not take it: HTTP 421" in result.error
        assert 0.5 <= elapsed < 0.9
        assert 3 <= len(stuck.write_requests) <= 6  # backed off: 50, 100, 200, ... ms
    finally:
        client.close()


@pytest.mark.gen_test
async def test_no_reachable_node_fails_within_the_timeout():
    client = Client([dead_address(), dead_address()], timeout=0.4)
    try:
        started = time.monotonic()
        result = await client.write("k", 1)
        assert result.status == "fail" and result.code is None and result.error.startswith("not sent")
        with pytest.raises(ClientError, match="no leader found"):
            await client.leader(timeout=0.3)
        with pytest.raises(ClientError, match="no node answered"):
            await client.read("k", timeout=0.2)
        assert time.monotonic() - started < 0.4 + 0.3 + 0.2 + 0.5
    finally:
        client.close()


@pytest.mark.gen_test
async def test_leader_wait_makes_writes_fail_fast_while_no_leader_is_up(fakes):
    follower = fakes("f", term=1)  # up, but names no leader
    client = Client([follower.address], timeout=10, leader_wait=0.2)
    try:
        started = time.monotonic()
        result = await client.write("k", 1)
        assert result.status == "fail" and time.monotonic() - started < 0.6
        assert follower.write_requests == []
    finally:
        client.close()


# --- reads ----------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_read_moves_on_from_a_node_that_has_not_reached_min_seq(fakes):
    behind = fakes("b")
    behind.reads = [(504, {"error": "min_seq=9 not reached", "applied_seq": 3, "min_seq": 9, "waited_ms": 1.0})]
    ahead = fakes("a")
    ahead.reads = [(200, {"key": "k", "value": "new", "found": True, "seq": 9, "applied_seq": 9})]
    client = Client([behind.address, dead_address(), ahead.address])
    try:
        read = await client.read("k", min_seq=9)
        assert (read.found, read.value, read.seq, read.applied_seq, read.node) == (True, "new", 9, 9, ahead.address)
        assert behind.requests == [("GET", "/read/k?min_seq=9")]
        with pytest.raises(ClientError, match="no node answered"):
            await client.read("k", node=behind.address, min_seq=9, timeout=0.2)
    finally:
        client.close()


# --- against the real nodes ------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_client_against_the_real_cluster(make_cluster):
    async with make_cluster(MIN_DELAY="0", MAX_DELAY="30") as cluster:
        client = Client([cluster.address(name) for name in cluster.follower_names + ["leader"]])
        try:
            assert await client.leader() == Leader("leader", cluster.address("leader"), 1)  # a new cluster's first term
            written = await client.write("user:1", {"name": "Ada"})
            assert (written.status, written.seq, written.term, written.leader) == ("ok", 1, 1, cluster.address("leader"))
            assert written.answer["seq"] == 1 and written.answer["confirmations"] >= written.answer["quorum"]
            assert len(written.answer["debug"]["replication_delays_ms"]) == 5
            for name in cluster.follower_names:
                read = await client.read("user:1", node=cluster.address(name), min_seq=written.seq)
                assert (read.found, read.value, read.seq, read.node) == (True, {"name": "Ada"}, 1, cluster.address(name))
                assert read.applied_seq >= 1
            assert (await client.delete("user:1")).status == "ok"
            missing = await client.delete("user:1")
            assert (missing.status, missing.code) == ("fail", 404)
            bad = await client.write("", 1)
            assert (bad.status, bad.code) == ("fail", 400) and "'key' must not be empty" in bad.error
            assert (await client.read("user:1", min_seq=2)).found is False
            with pytest.raises(ClientError, match="refused the read: HTTP 400"):
                await client.read("k" * 2000)
        finally:
            client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_session_reads_its_own_writes_on_lagging_followers(make_cluster):
    # Quorum 1 and up to 300 ms of lag: most followers are behind when a write is acknowledged.
    async with make_cluster(WRITE_QUORUM="1", MIN_DELAY="50", MAX_DELAY="300") as cluster:
        client = Client([cluster.address(name) for name in ["leader"] + cluster.follower_names])
        session = client.session()
        try:
            behind = 0
            for i in range(12):
                written = await session.write("cart", i)
                assert written.status == "ok" and session.last_seq == written.seq
                behind += sum(cluster.nodes[f].store.applied_seq < written.seq for f in cluster.follower_names)
                read = await session.read("cart")  # a different node each time
                assert read.value == i and read.applied_seq >= written.seq, (i, read)
            assert behind >= 12  # the reads really went to followers that had to wait
        finally:
            client.close()


@pytest.mark.gen_test(timeout=60)
async def test_the_history_load_writes_through_the_client(make_cluster):
    """tests/history.py's Load (its own loop in a thread) against the in-process nodes."""
    from tests.history import Load, check

    async with make_cluster(MAX_DELAY="20") as cluster:
        urls = [f"http://{cluster.address(name)}" for name in ["leader"] + cluster.follower_names]
        load = Load(urls[0], "load-", count=40, concurrency=4, addresses=urls[1:]).start()
        result = await asyncio.get_running_loop().run_in_executor(None, load.join)
        assert result.count("ok") == 40
        assert sorted(op.seq for op in result.ops) == list(range(1, 41))
        await cluster.settled()
        data = {name: cluster.nodes[name].store.snapshot() for name in cluster.nodes}
        assert check(result, "load-", data).valid
