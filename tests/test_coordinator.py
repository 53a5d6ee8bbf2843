"""The failover coordinator against a real etcd, with a stand-in node: what it does with the
lease around a promotion, independent of the replication underneath."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from node.etcd import EtcdClient
from node.failover import Coordinator
from tests.test_etcd import etcd, etcd_server, refused_endpoint, until  # noqa: F401 - fixtures

TTL_MS = 2000


class SlowNode:
    """Just what the coordinator asks of a node; its promotion takes ``promotion_s``."""

    def __init__(self, prefix: str, promotion_s: float) -> None:
        self.config = SimpleNamespace(node_id="follower1", leader_ttl_ms=TTL_MS, etcd_prefix=prefix, failover="auto",
                                      write_quorum=2, catchup_interval_ms=1000, peers=(("follower1", "x:1"),),
                                      followers=("x:2",))
        self.state = SimpleNamespace(term=1, history=((1, 1, "leader"),))
        self.role = "follower"
        self.promotion_s = promotion_s

    async def promote(self, term: int) -> dict:
        await asyncio.sleep(self.promotion_s)
        self.role, self.state.term = "leader", term
        return {"promoted": True, "term": term}


@pytest.mark.gen_test(timeout=30)
async def test_a_promotion_longer_than_the_lease_keeps_the_key_and_may_acknowledge(etcd, etcd_server, request):  # noqa: F811
    prefix = f"/{request.node.name}"
    node = SlowNode(prefix, promotion_s=1.5 * TTL_MS / 1000)
    coordinator = Coordinator(node, EtcdClient(etcd_server.endpoints))
    try:
        summary = await coordinator._race(known_term=1, began=coordinator.clock())
        assert summary["term"] == 2
        assert coordinator.may_acknowledge(), "the lease ran out while the promotion ran"
        held = await etcd.get(prefix + "/leader")
        assert held is not None and held.text == "follower1" and held.lease == coordinator.lease_id
        recorded = await etcd.get(prefix + "/last_failover")
        assert recorded is not None and '"to": "follower1"' in recorded.text
    finally:
        await coordinator.close()


def test_the_next_cycle_comes_when_the_renewal_falls_due_not_a_quarter_later():
    now = [100.0]
    coordinator = Coordinator(SlowNode("/cadence", 0), EtcdClient(["http://127.0.0.1:1"]), clock=lambda: now[0])
    assert coordinator._next_cycle_in() == pytest.approx(0.5)  # no lease: TTL / 4
    coordinator.lease.renewed(sent_at=100.0, ttl_s=2.0)
    now[0] = 100.4
    assert coordinator._next_cycle_in() == pytest.approx(0.2667, abs=1e-3)  # due at 100 + 2/3
    now[0] = 101.0
    assert coordinator._next_cycle_in() == 0.0  # overdue: at once
    coordinator.etcd.close()


@pytest.mark.gen_test(timeout=20)
async def test_the_watch_wakes_the_cycle_when_the_leader_key_changes(etcd, etcd_server, request):  # noqa: F811
    prefix = f"/{request.node.name}"
    coordinator = Coordinator(SlowNode(prefix, 0), EtcdClient(etcd_server.endpoints))
    watching = asyncio.ensure_future(coordinator._watch())
    try:
        await asyncio.wait_for(coordinator._woken.wait(), 5)  # the watch is in place
        coordinator._woken.clear()
        await etcd.put(prefix + "/leader", "leader")
        await asyncio.wait_for(coordinator._woken.wait(), 5)
        coordinator._woken.clear()
        await etcd.delete(prefix + "/leader")  # a lease running out deletes the key the same way
        await asyncio.wait_for(coordinator._woken.wait(), 5)
    finally:
        watching.cancel()
        coordinator.etcd.close()


@pytest.mark.gen_test(timeout=20)
async def test_status_says_which_etcd_endpoints_answer(etcd_server, request):  # noqa: F811
    dead = refused_endpoint()
    coordinator = Coordinator(SlowNode(f"/{request.node.name}", 0), EtcdClient(etcd_server.endpoints + [dead]))
    checking = asyncio.ensure_future(coordinator._check_members())
    try:
        await until(lambda: coordinator.members)
        members = {m["endpoint"]: m for m in coordinator.status()["etcd_members"]}
        live = members[etcd_server.endpoints[0]]
        assert live["reachable"] and live["has_leader"] and "error" not in live
        assert not members[dead]["reachable"] and members[dead]["error"]
    finally:
        checking.cancel()
        coordinator.etcd.close()
