"""Membership changes on the real Compose cluster, under load, with a history check: the
optional ``follower6`` service joins (LEADER, no PEERS), another follower is removed, and the
leader is killed right after the change, so that etcd's automatic failover runs on the new
membership. Runs after the automatic-failover module (tests/conftest.py), which leaves the
cluster failing over by itself."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from node.admin import call
from node.compose import SERVICES
from node.logtool import compare_logs
from tests.failover_support import converged, health, leader_now, states, wait_until
from tests.history import Load, check, record
from tests.net import free_port_block

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

SECRET = "kvstore-replication-secret"  # the compose file's default


class Members:
    """The Compose services plus follower6, for the helpers that take a cluster with ``url``."""

    def __init__(self, compose, port6: int) -> None:
        self.compose, self.port6 = compose, port6

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port6}" if name == "follower6" else self.compose.url(name)


def members_of(nodes, name) -> dict:
    return call("GET", nodes.url(name) + "/admin/members", SECRET)[1]


AUTO = {"FAILOVER": "auto", "LEADER_TTL": "2000"}


@pytest.fixture
def follower6(compose):
    """The profile's follower6 on a free port; stopped and its volume removed afterwards."""
    port6 = free_port_block(1)
    compose.env.update(FOLLOWER6_PORT=str(port6), COMPOSE_PROFILES="follower6")
    try:
        yield port6
    finally:
        compose.run("rm", "--stop", "--force", "follower6", check=False, capture=True)
        subprocess.run(["docker", "volume", "rm", f"{compose.project}_follower6-data"], capture_output=True)
        compose.env.pop("COMPOSE_PROFILES")


def test_a_follower_joins_one_leaves_and_the_leader_dies_right_after_without_losing_a_write(compose, follower6,
                                                                                             tmp_path):
    compose.up(*SERVICES, env=AUTO)  # recreates nothing after the automatic-failover module
    nodes = Members(compose, follower6)
    wait_until(lambda: leader_now(compose) is not None, 60, "a leader")
    old = leader_now(compose)
    leaving = "follower5" if old != "follower5" else "follower4"
    prefix = f"members-{uuid.uuid4().hex[:6]}-"
    urls = [compose.url(s) for s in SERVICES]
    load_ = Load(compose.url(old), prefix, count=300, concurrency=8, max_seconds=120, request_timeout=5,
                 addresses=urls).start()
    try:
        load_.wait_completed(40)
        compose.run("up", "-d", "--no-build", "--no-deps", "follower6")
        compose.wait_healthy(["follower6"])
        code, answer = call("POST", compose.url(old) + "/admin/members", SECRET,
                            body={"add": {"node_id": "follower6", "address": "follower6:8000"}})
        assert code == 200, answer
        wait_until(lambda: "follower6" in members_of(nodes, old)["voters"] and members_of(nodes, old)["committed"], 60,
                   "follower6 caught up, promoted, and the change committed (one change at a time)")
        code, answer = call("POST", compose.url(old) + "/admin/members", SECRET, body={"remove": leaving})
        assert code == 200, answer
        compose.docker("kill", old)  # right after the change: the next leader is elected on it
        wait_until(lambda: leader_now(nodes, [s for s in [*SERVICES, "follower6"] if s not in (old, leaving)])
                   is not None, 60, "a new leader, elected by etcd")
        load_.wait_completed(250)
    finally:
        load_.stop()
        result = load_.join()
    compose.run("start", old)
    compose.wait_healthy([old])
    new = leader_now(nodes, [s for s in [*SERVICES, "follower6"] if s != leaving])
    staying = [s for s in SERVICES if s != leaving] + ["follower6"]
    wait_until(lambda: converged(nodes, staying), 90, "every member converges")
    data = {n: s["data"] for n, s in states(nodes, staying).items()}
    verdict = check(result, prefix, data)
    record("compose: follower6 joined, one removed, leader killed right after", verdict, 0.0,
           note=f"{old} -> {new}; {leaving} removed")
    assert verdict.valid, (verdict.lost[:10], verdict.unexpected[:10], verdict.partial[:10])
    assert verdict.ok > 0
    in_force = members_of(nodes, new)
    full = [m["node_id"] for m in in_force["members"] if not m["learner"]]  # the new leader may be follower6 itself
    assert "follower6" in full and leaving not in [m["node_id"] for m in in_force["members"]], in_force
    assert all(health(nodes, n)["leader_id"] == new for n in staying)
    paths = [compose.copy_log(s, str(tmp_path / s)) for s in staying]
    assert compare_logs(paths)["equal"]
