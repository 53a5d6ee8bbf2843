"""Leader failure on the real Compose cluster, under load, with history checks: the leader
killed or cut off from the network while a follower is promoted by hand, then back.

Each case ends by promoting the ``leader`` service again (a switchover: the acting leader
promises and steps down), so the other Docker tests find the cluster as they expect it.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from node.admin import COMPOSE_SECRET, call
from node.compose import SERVICES
from node.log import read_log
from node.logtool import compare_logs
from tests.failover_support import converged, health, states, wait_until
from tests.history import Load, check, record

pytestmark = pytest.mark.docker


def promote(compose, service, attempts=3):
    """Promote ``service``, as an operator would: a refusal (503: a follower whose answer did not
    arrive in time) changes nothing, so it is tried again, at most ``attempts`` times."""
    for attempt in range(attempts):
        code, answer = call("POST", compose.url(service) + "/admin/promote", COMPOSE_SECRET)
        if code != 503 or attempt == attempts - 1:
            break
        print(f"promotion of {service} refused, trying again: {answer.get('error')}")
        time.sleep(1.0)
    assert code == 200, answer
    return answer






def rolled_back(compose, tmp_path, prefix):
    """Entries of this run in every node's rollback files."""
    entries = []
    for service in SERVICES:
        dest = tmp_path / f"rollback-{service}"
        copied = subprocess.run(["docker", "cp", f"{compose.container(service)}:/data/rollback", str(dest)],
                                capture_output=True)
        if copied.returncode == 0:
            for name in os.listdir(dest):
                entries += [r.entry for r in read_log(str(dest / name)).records]
    return [e for e in entries if e.key and e.key.startswith(prefix)]


def network(compose) -> str:
    return f"{compose.project}_default"


FAILOVERS = {
    "leader SIGKILL, promote follower3": (
        "follower3",
        lambda c: c.docker("kill", "leader"),
        lambda c: (c.run("start", "leader"), c.wait_healthy(["leader"])),
    ),
    "leader cut off, promote follower1": (
        "follower1",
        lambda c: subprocess.run(["docker", "network", "disconnect", network(c), c.container("leader")], check=True),
        lambda c: subprocess.run(["docker", "network", "connect", "--alias", "leader", network(c), c.container("leader")],
                                 check=True),
    ),
}


# (case, WRITE_QUORUM of every node). The suite's quorum: automatic failover at W = 1, 3 and 5
# is tests/test_failover_auto_docker.py's, manual promotion at W = 1, 3 and 5 the local cluster's
# (tests/test_failover_local.py, which also pauses the leader); here a dead leader and a live
# one cut off (a switchover: etcd's key moves from it) are replaced by hand through the lock.
CASES = [("leader SIGKILL, promote follower3", 2), ("leader cut off, promote follower1", 2)]
SUITE_QUORUM = 2


@pytest.fixture(scope="module")
def quorum_setter(compose):
    """Sets WRITE_QUORUM on every node (any may be promoted: the new leader's counts), and puts the
    suite's quorum back when the module is done, for the other Docker tests."""
    current = [SUITE_QUORUM]

    def set_everywhere(quorum: int) -> None:
        if quorum != current[0]:
            compose.up(env={"WRITE_QUORUM": str(quorum)}, recreate=True)
            wait_until(lambda: all(health(compose, s).get("leader_id") == "leader" for s in SERVICES), 60,
                       f"every node follows leader at W={quorum}")
            current[0] = quorum

    yield set_everywhere
    set_everywhere(SUITE_QUORUM)


@pytest.mark.parametrize("case, quorum", CASES, ids=[f"{c} (W={w})" for c, w in CASES])
def test_failover_under_load_loses_no_acknowledged_write(compose, tmp_path, quorum_setter, case, quorum):
    quorum_setter(quorum)
    new_leader, inject, heal = FAILOVERS[case]
    prefix = f"failover-{uuid.uuid4().hex[:6]}-"
    urls = [compose.url(s) for s in SERVICES]
    # The count only bounds the load: it runs until the new term has acknowledged writes and the
    # old leader has rejoined, however fast the machine is.
    load_ = Load(urls[0], prefix, count=3000, concurrency=8, max_seconds=90, request_timeout=5, addresses=urls).start()
    try:
        load_.wait_completed(40)
        inject(compose)
        started = time.monotonic()
        answer = promote(compose, new_leader)
        assert answer["deposed"] == "leader"
        load_.wait_acknowledged(20, started, term=answer["term"])
        heal(compose)
        wait_until(lambda: health(compose, "leader").get("role") == "follower", 60, "the old leader steps down")
        load_.wait_acknowledged(20, time.monotonic())
    finally:
        load_.stop()
        result = load_.join()
    began = time.monotonic()
    wait_until(lambda: converged(compose), 90, "every node converges")
    converge_s = time.monotonic() - began
    data = {s: found["data"] for s, found in states(compose).items()}
    verdict = check(result, prefix, data)
    rolled = rolled_back(compose, tmp_path, prefix)
    new_term = [op.finished_at for op in result.ops if op.status == "ok" and op.term == answer["term"]]
    record(f"{case} (W={quorum})", verdict, converge_s, rolled_back=len(rolled),
           first_write_s=(min(new_term) - started) if new_term else "none")
    assert verdict.valid, (verdict.lost[:10], verdict.unexpected[:10], verdict.partial[:10])
    acknowledged = {op.key: op.value for op in result.ops if op.status == "ok"}
    assert not [e.key for e in rolled if acknowledged.get(e.key) == e.value and data["leader"].get(e.key) != e.value]
    assert new_term, "the new leader acknowledged no write"
    paths = [compose.copy_log(s, str(tmp_path / f"{s}.log")) for s in SERVICES]
    assert compare_logs(paths)["equal"]
    # Switchover back, so the other tests find "leader" leading; nothing is lost by it either.
    back = promote(compose, "leader")
    assert back["term"] == answer["term"] + 1
    wait_until(lambda: all(health(compose, s).get("leader_id") == "leader" for s in SERVICES), 60,
               "every node follows leader again")
    wait_until(lambda: converged(compose), 60, "every node converges after the switchover")
    data = states(compose)["leader"]["data"]
    assert all(data.get(key) == value for key, value in acknowledged.items())
