"""Automatic failover on the real Compose cluster, with its three etcd members as the
coordinator: every fault under load, with a history check. Nobody promotes by hand here; the
nodes decide through etcd's leader key.

For each case: attempted, acknowledged, lost (must be 0), rolled back (unacknowledged writes
only), and the seconds without an acknowledged write. The module turns FAILOVER=auto on for
every node and leaves it so: it runs after every other test (tests/conftest.py). The pause
(``POST /admin/pause``) is the local cluster's test (tests/test_failover_etcd.py).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest

from node.compose import ETCD_SERVICES, SERVICES
from node.logtool import compare_logs
from tests.failover_support import converged, failover_status, health, leader_now, states, wait_until
from tests.history import Load, check, record
from tests.net import http
from tests.test_failover_docker import rolled_back

# A case waits out one or two leases and each quorum change recreates six containers.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(480)]

TTL_S = 2.0
AUTO = {"FAILOVER": "auto", "LEADER_TTL": str(int(TTL_S * 1000))}




def holds_key(compose, service):
    try:
        return failover_status(compose, service)["leader_key_holder"] == service
    except OSError:
        return False


def net(compose, name):
    return f"{compose.project}_{name}"


def disconnect(compose, network, service):
    subprocess.run(["docker", "network", "disconnect", net(compose, network), compose.container(service)], check=True)


def reconnect(compose, network, service):
    subprocess.run(["docker", "network", "connect", "--alias", service, net(compose, network),
                    compose.container(service)], check=True)


def start(compose, *services):
    compose.run("start", *services)
    compose.wait_healthy(services)


@pytest.fixture(scope="module")
def auto_quorum(compose):
    """Recreates every node with automatic failover and the given WRITE_QUORUM (once per
    quorum). The module runs last (tests/conftest.py), so the cluster is left so."""
    current = [None]

    def set_quorum(quorum: int) -> None:
        if quorum != current[0]:
            compose.up(env=dict(AUTO, WRITE_QUORUM=str(quorum)), recreate=True)
            wait_until(lambda: leader_now(compose) is not None and holds_key(compose, leader_now(compose)), 60,
                       f"one leader holding the key at W={quorum}")
            current[0] = quorum

    return set_quorum


def unavailable_s(ops, since: float) -> float:
    """The longest stretch after ``since`` without an acknowledged write (from ``since`` to the
    first acknowledgement, then between acknowledgements)."""
    acked = sorted(op.finished_at for op in ops if op.status == "ok" and op.finished_at and op.finished_at > since)
    marks = [since] + acked
    return max((b - a for a, b in zip(marks, marks[1:])), default=float("inf"))


def run_case(compose, tmp_path, name, inject, heal, expect_new_leader=True, writes_during=True):
    """Load through node.client (it follows a new leader), inject, wait for the outcome (a new
    leader; writes acknowledged during the fault where the cluster can take them), heal, wait
    for writes after the heal, then check: no acknowledged write lost, every node converged
    with equal logs, every rolled-back entry unacknowledged. The load's count only bounds it."""
    old = leader_now(compose)
    assert old is not None, "no leader to start from"
    term_before = health(compose, old)["term"]
    prefix = f"auto-{uuid.uuid4().hex[:6]}-"
    urls = [compose.url(old)] + [compose.url(s) for s in SERVICES if s != old]
    load_ = Load(urls[0], prefix, count=3000, concurrency=8, max_seconds=100, request_timeout=5, addresses=urls).start()
    try:
        load_.wait_completed(40)
        injected = time.monotonic()
        note = inject(compose, old) or ""
        if expect_new_leader:
            wait_until(lambda: leader_now(compose, [s for s in SERVICES if s != old]) is not None, 45,
                       f"a follower takes over from {old} by itself")
        if writes_during:
            load_.wait_acknowledged(20, injected)
        heal(compose, old)
        load_.wait_acknowledged(20, time.monotonic())
    finally:
        load_.stop()
        result = load_.join()
    wait_until(lambda: leader_now(compose) is not None and converged(compose), 90, "one leader, every node converged")
    new = leader_now(compose)
    data = {s: st["data"] for s, st in states(compose).items()}
    verdict = check(result, prefix, data)
    rolled = rolled_back(compose, tmp_path, prefix)
    acked = {op.key: op.value for op in result.ops if op.status == "ok"}
    gap = unavailable_s(result.ops, injected)
    record(name, verdict, 0.0, rolled_back=len(rolled), unavailable_s=gap,
           note=f"{old} -> {new}, term {term_before} -> {health(compose, new)['term']}; {note}".strip("; "))
    assert verdict.valid, (verdict.lost[:10], verdict.unexpected[:10], verdict.partial[:10])
    # An entry in a rollback file may be a write the new leader kept (restamped in its term);
    # what must not happen is an acknowledged write that only the rollback file holds.
    assert not [e.key for e in rolled if acked.get(e.key) == e.value and data[new].get(e.key) != e.value]
    paths = [compose.copy_log(s, str(tmp_path / f"{s}.log")) for s in SERVICES]
    assert compare_logs(paths)["equal"]
    return old, new, verdict


def kill(compose, old):
    compose.docker("kill", old)


def start_old(compose, old):
    start(compose, old)
    wait_until(lambda: health(compose, old).get("role") == "follower", 60, f"{old} follows the new leader")


def test_with_w1_and_a_follower_down_nobody_takes_over_and_status_says_why(compose, auto_quorum):
    """W = 1: a new leader needs all five other nodes' answers (N - W + 1); with one of them
    down it could miss the one follower that held an acknowledged write, so nobody races."""
    auto_quorum(1)
    old = leader_now(compose)
    down = next(s for s in SERVICES if s != old)
    waiting = [s for s in SERVICES if s not in (old, down)]
    compose.docker("kill", down)
    compose.docker("kill", old)
    try:
        wait_until(lambda: all("needed answered" in (failover_status(compose, s)["last_decision"] or "")
                               for s in waiting), 30, "every follower says why it does not race")
        time.sleep(2 * TTL_S)  # the absence of a leader is the claim: give a wrong race time to happen
        assert leader_now(compose, waiting) is None
        reason = failover_status(compose, waiting[0])["last_decision"]
        print(f"W=1, {old} and {down} down: {reason}")
    finally:
        start(compose, down)
    wait_until(lambda: leader_now(compose, waiting + [down]) is not None, 45, "a follower takes over once all answer")
    start(compose, old)
    wait_until(lambda: health(compose, old).get("role") == "follower", 60, f"{old} follows")


@pytest.mark.parametrize("quorum", [1, 5, 3])  # in this order: one recreate each, W=3 kept for what follows
def test_leader_sigkilled_is_replaced_automatically(compose, tmp_path, auto_quorum, quorum):
    auto_quorum(quorum)
    # At W = 5 the new leader needs every follower, the old leader among them: it acknowledges
    # once that one is back.
    old, new, verdict = run_case(compose, tmp_path, f"compose auto: leader SIGKILL (W={quorum})", kill,
                                 start_old, writes_during=quorum < 5)
    assert new != old and verdict.ok > 0
    last = failover_status(compose, new)["last_failover"]
    assert last is not None and last["from"] == old and last["to"] == new


def pause_longer_than_ttl(compose, old):
    compose.docker("pause", old)


def unpause(compose, old):
    compose.docker("unpause", old)
    wait_until(lambda: health(compose, old).get("role") == "follower", 60, f"{old} steps down")


def from_followers(compose, old):
    disconnect(compose, "default", old)


def back_to_followers(compose, old):
    reconnect(compose, "default", old)
    wait_until(lambda: health(compose, old).get("role") == "follower", 60, f"{old} follows")


def from_etcd(compose, old):
    """Cut off from etcd only: it must stop acknowledging within LEADER_TTL by its own clock."""
    disconnect(compose, f"etcd-{old}", old)
    cut = time.monotonic()
    wait_until(lambda: not health(compose, old).get("role") == "leader" or _refused(compose, old), 10,
               f"{old} stops acknowledging")
    stopped = time.monotonic() - cut
    assert stopped < TTL_S + 1.5, f"{old} went on acknowledging {stopped:.2f} s after losing etcd"
    return f"stopped acknowledging {stopped:.2f} s after losing etcd"


def _refused(compose, service):
    try:
        code, _ = http("POST", compose.url(service) + "/write", {"key": "probe", "value": 0}, timeout=TTL_S + 2)
    except OSError:
        return True
    return code != 200


def back_to_etcd(compose, old):
    reconnect(compose, f"etcd-{old}", old)
    wait_until(lambda: failover_status(compose, old)["etcd_reachable"], 30, f"{old} reaches etcd again")


FAULTS = {
    "leader paused longer than LEADER_TTL": (pause_longer_than_ttl, unpause),
    "leader cut off from the followers, not from etcd": (from_followers, back_to_followers),
    "leader cut off from etcd, not from the followers": (from_etcd, back_to_etcd),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_moves_leadership_and_loses_no_acknowledged_write(compose, tmp_path, auto_quorum, fault):
    auto_quorum(3)
    inject, heal = FAULTS[fault]
    old, new, _ = run_case(compose, tmp_path, f"compose auto: {fault} (W=3)", inject, heal)
    assert new != old


def etcd_raft_leader(compose) -> str:
    """The etcd member that leads etcd's own raft group, as etcdctl reports it."""
    endpoints = ",".join(f"http://{m}:2379" for m in ETCD_SERVICES)
    out = subprocess.run(["docker", "exec", compose.container(ETCD_SERVICES[0]), "etcdctl", f"--endpoints={endpoints}",
                          "endpoint", "status", "-w", "json"], capture_output=True, text=True, check=True).stdout
    for member in json.loads(out):
        status = member["Status"]
        if status["header"]["member_id"] == status["leader"]:
            return member["Endpoint"].split("//")[1].split(":")[0]
    raise AssertionError(f"no etcd member reports itself leader: {out[:500]}")


def test_one_etcd_member_down_changes_nothing(compose, tmp_path, auto_quorum):
    """A member that does not lead etcd's raft group (losing that one costs etcd an election of
    its own, about a second, which a LEADER_TTL of 2 s may not cover)."""
    auto_quorum(3)
    member = next(m for m in ETCD_SERVICES if m != etcd_raft_leader(compose))

    def kill_one(c, old):
        c.docker("kill", member)
        return f"{member} killed"

    def back(c, old):
        start(c, member)

    old, new, verdict = run_case(compose, tmp_path, "compose auto: one etcd member down (W=3)", kill_one, back,
                                 expect_new_leader=False)
    assert new == old and verdict.failed == 0 and verdict.unknown == 0


def test_a_majority_of_etcd_down_stops_writes_and_they_resume_when_it_is_back(compose, tmp_path, auto_quorum):
    auto_quorum(3)

    def kill_two(c, old):
        for member in ETCD_SERVICES[1:]:
            c.docker("kill", member)
        stopped = time.monotonic()
        wait_until(lambda: _refused(c, old), 10, f"{old} stops acknowledging without etcd")
        took = time.monotonic() - stopped
        assert took < TTL_S + 1.5, took
        return f"writes stopped {took:.2f} s after etcd lost its majority"

    def back(c, old):
        start(c, *ETCD_SERVICES[1:])

    old, new, verdict = run_case(compose, tmp_path, "compose auto: a majority of etcd down (W=3)", kill_two, back,
                                 expect_new_leader=False, writes_during=False)
    assert verdict.ok > 0


def test_two_failovers_in_a_row(compose, tmp_path, auto_quorum):
    auto_quorum(3)
    killed = []

    def kill_twice(c, old):
        c.docker("kill", old)
        killed.append(old)
        wait_until(lambda: leader_now(c, [s for s in SERVICES if s not in killed]) is not None, 45, "a first failover")
        second = leader_now(c, [s for s in SERVICES if s not in killed])
        wait_until(lambda: _acknowledges(c, second), 30, f"{second} acknowledges")
        c.docker("kill", second)
        killed.append(second)
        wait_until(lambda: leader_now(c, [s for s in SERVICES if s not in killed]) is not None, 45, "a second failover")
        return f"{killed[0]}, then {second}, killed"

    def start_both(c, old):
        start(c, *killed)
        wait_until(lambda: all(health(c, s).get("role") == "follower" for s in killed), 60, "both follow")

    old, new, _ = run_case(compose, tmp_path, "compose auto: two failovers in a row (W=3)", kill_twice, start_both,
                           expect_new_leader=False)
    assert new not in killed


def _acknowledges(compose, service):
    try:
        return http("POST", compose.url(service) + "/write", {"key": "probe", "value": 1}, timeout=5)[0] == 200
    except OSError:
        return False
