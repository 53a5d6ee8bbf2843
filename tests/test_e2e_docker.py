"""End to end against the real Compose cluster: 1 leader + 5 followers in containers."""

from __future__ import annotations

import concurrent.futures
import json

import pytest

from node.handlers import OPENAPI_PATH
from node.logtool import compare_logs, load
from tests.dockerenv import http, wait_converged

pytestmark = pytest.mark.docker

FOLLOWERS = [f"follower{i}" for i in range(1, 6)]


def write(compose, key, value):
    return http("POST", compose.url("leader") + "/write", {"key": key, "value": value})


def write_many(compose, prefix, count, workers=10):
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda i: write(compose, f"{prefix}{i}", {"n": i}), range(count)))


def logs_equal(compose, tmp_path, services=("leader", *FOLLOWERS)):
    paths = [compose.copy_log(s, str(tmp_path / f"{s}.log")) for s in services]
    return compare_logs(paths)


def set_quorum(compose, quorum: int, timeout_ms: int = 3000):
    compose.up("leader", env={"WRITE_QUORUM": str(quorum), "WRITE_TIMEOUT": str(timeout_ms)}, recreate=True)


def test_writes_reach_every_follower_and_logs_are_equal(compose, tmp_path):
    answers = write_many(compose, "e2e-", 30)
    assert all(status == 200 and a["confirmations"] >= a["quorum"] for status, a in answers)
    wait_converged(compose)
    leader = http("GET", compose.url("leader") + "/all")[1]
    for follower in FOLLOWERS:
        assert http("GET", compose.url(follower) + "/all")[1]["data"] == leader["data"]
        status, answer = http("GET", compose.url(follower) + "/read/e2e-7")
        assert status == 200 and answer["value"] == {"n": 7}
    report = logs_equal(compose, tmp_path)
    assert report["equal"], report
    assert max(load(report["reference"])) == leader["applied_seq"]  # the log runs to the last entry


def test_every_container_serves_the_api_description(compose):
    with open(OPENAPI_PATH) as f:
        expected = json.load(f)
    for service in ("leader", *FOLLOWERS):
        status, answer = http("GET", compose.url(service) + "/openapi.json")
        assert status == 200 and answer == expected


def test_follower_refuses_writes_naming_the_leader(compose):
    before = http("GET", compose.url("follower2") + "/status")[1]["applied_seq"]
    status, answer = http("POST", compose.url("follower2") + "/write", {"key": "nope", "value": 1})
    assert status == 421 and (answer["leader_id"], answer["leader_address"]) == ("leader", "leader:8000")
    assert "leader:8000" in answer["error"] and answer["term"] >= 1
    assert http("GET", compose.url("follower2") + "/read/nope")[0] == 404
    assert http("GET", compose.url("follower2") + "/status")[1]["applied_seq"] == before


def test_internal_endpoints_need_the_replication_secret(compose):
    status, answer = http("POST", compose.url("follower1") + "/replicate",
                          {"seq": 999999, "op": "set", "key": "injected", "value": 1, "ts": 0})
    assert status == 403 and "X-Replication-Secret" in answer["error"]
    assert http("GET", compose.url("leader") + "/log?after=0")[0] == 403
    assert http("GET", compose.url("follower1") + "/read/injected")[0] == 404


def test_quorum_setting_changes_confirmations_awaited(compose):
    try:
        for quorum in (1, 5):
            set_quorum(compose, quorum)
            assert http("GET", compose.url("leader") + "/status")[1]["write_quorum"] == quorum
            answers = write_many(compose, f"q{quorum}-", 10)
            assert all(status == 200 for status, _ in answers), answers
            assert all(a["quorum"] == quorum and a["confirmations"] >= quorum for _, a in answers)
            if quorum == 5:
                assert all(a["confirmations"] == 5 for _, a in answers)
    finally:
        set_quorum(compose, 2)
    wait_converged(compose)


def test_stopped_follower_quorum_limits_and_catch_up(compose, tmp_path):
    compose.run("stop", "follower3")
    try:
        for quorum in (2, 4):
            set_quorum(compose, quorum)
            answers = write_many(compose, f"down{quorum}-", 10)
            assert all(status == 200 and a["confirmations"] >= quorum for status, a in answers), answers
        set_quorum(compose, 5, timeout_ms=1500)
        status, answer = write(compose, "needs-all-five", 1)
        assert status == 504 and answer["confirmations"] == 4 and answer["quorum"] == 5
        assert "4 of 5 required" in answer["error"] and "keeps replicating" in answer["error"]
    finally:
        compose.up("follower3")
        set_quorum(compose, 2)
    wait_converged(compose)
    # The timed-out write stayed in the leader's log and reached every follower, follower3 too.
    assert http("GET", compose.url("follower3") + "/read/needs-all-five")[1]["value"] == 1
    report = logs_equal(compose, tmp_path)
    assert report["equal"], report


def test_quorum_study_runs_against_the_compose_cluster(compose, docker_compose_project_name, tmp_path):
    import pandas as pd

    from analysis.__main__ import main as study

    try:
        paths = study(["-p", docker_compose_project_name, "--base-port", str(compose.ports["leader"]),
                       "--writes", "10", "--concurrency", "5", "--quorums", "1", "3", "--max-delay", "200",
                       "--output", str(tmp_path / "results"), "--no-progress"])
    finally:  # back to the suite's settings for the tests that follow
        compose.up("leader", env={"WRITE_QUORUM": "2"}, recreate=True)
    writes = pd.read_csv(paths["writes"])
    assert len(writes) == 20 and writes["success"].all()
    assert (writes["confirmations"] >= writes["quorum"]).all()
    summary = json.loads(open(paths["summary"]).read())
    assert "Docker Compose" in summary["parameters"]["cluster"]
    assert (tmp_path / "results" / "REPORT.md").exists()
