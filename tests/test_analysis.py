"""The write-quorum study (`python -m analysis`): its pure parts, and one run on the local cluster."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re

import pandas as pd
import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler
from tqdm import tqdm

from analysis import consistency as cons
from analysis import report
from analysis.__main__ import add_log_comparison, main, measure_quorum, parse_args
from analysis.cluster import (
    ComposeCluster,
    Endpoints,
    NoLeader,
    leader_name,
    make_endpoints,
    node_settings,
)
from analysis.workload import (
    PlannedWrite,
    expected_kth,
    follower_names,
    kth_smallest,
    plan_writes,
    run_writes,
    std_kth,
)
from node.client import Client, Leader
from node.log import HEADER, LOG_FILE_NAME, Entry, encode_record
from tests.net import free_port_block
from tests.test_failover import promote, wait_for

# --- order statistics -------------------------------------------------------------------------


def test_kth_smallest_picks_the_kth_fastest_delay():
    delays = [412.0, 3.5, 980.1, 77.0, 250.0]
    assert [kth_smallest(delays, k) for k in range(1, 6)] == [3.5, 77.0, 250.0, 412.0, 980.1]
    with pytest.raises(ValueError):
        kth_smallest(delays, 6)
    with pytest.raises(ValueError):
        kth_smallest(delays, 0)


def test_expected_kth_is_the_uniform_order_statistic():
    assert [expected_kth(0, 1000, k, 5) for k in range(1, 6)] == pytest.approx([1000 * k / 6 for k in range(1, 6)])
    assert expected_kth(100, 400, 1, 2) == pytest.approx(200.0)
    assert expected_kth(50, 50, 3, 5) == 50
    # One draw: the mean and standard deviation of a plain uniform distribution.
    assert expected_kth(0, 1, 1, 1) == pytest.approx(0.5)
    assert std_kth(0, 1, 1, 1) == pytest.approx(1 / math.sqrt(12))
    with pytest.raises(ValueError):
        expected_kth(0, 1000, 6, 5)


def test_plan_is_seeded_with_unique_values():
    plan = plan_writes(50, 4, quorum=2, seed=7)
    assert plan == plan_writes(50, 4, quorum=2, seed=7)
    assert len({w.value for w in plan}) == 50
    assert {w.key for w in plan} <= {f"key-{i:02d}" for i in range(4)}
    assert plan != plan_writes(50, 4, quorum=3, seed=7)


# --- snapshot diff, replay, predictions -------------------------------------------------------


def test_diff_counts_missing_stale_and_extra_keys():
    leader = {"a": 1, "b": 2, "c": 3}
    assert cons.diff_states(leader, dict(leader)) == {
        "keys_missing": 0, "keys_stale": 0, "keys_extra": 0, "keys_differing": 0}
    assert cons.diff_states(leader, {"a": 1, "b": "old", "d": 4}) == {
        "keys_missing": 1, "keys_stale": 1, "keys_extra": 1, "keys_differing": 3}
    assert cons.diff_states({}, {})["keys_differing"] == 0


def test_prefix_check_uses_sequence_order():
    writes = [{"seq": 11, "key": "x", "value": "1"}, {"seq": 12, "key": "y", "value": "2"},
              {"seq": 13, "key": "x", "value": "3"}]
    entries = cons.study_entries(writes, clear_seq=10)
    assert cons.replay(entries) == {"x": "3", "y": "2"}
    assert cons.is_prefix({"x": "1", "y": "2"}, 12, entries, clear_seq=10)
    assert not cons.is_prefix({"x": "3"}, 12, entries, clear_seq=10)  # a mix, not a prefix
    assert cons.is_prefix({}, 10, entries, clear_seq=10)
    assert cons.is_prefix({}, 9, entries, clear_seq=10) is None
    assert cons.study_entries([{"seq": None, "key": "x", "value": "1"}], 10) is None
    # Arrival order 13 before 11 would leave the old value behind.
    arrived = [entries[0], entries[3], entries[1], entries[2]]
    assert cons.replay(arrived, by_seq=False) == {"x": "1", "y": "2"}


def test_pending_sends_and_predicted_convergence_come_from_the_drawn_delays():
    writes = [{"start_s": 0.0, "delays_ms": json.dumps({"follower1": 100.0, "follower2": 900.0})},
              {"start_s": 0.5, "delays_ms": {"follower1": 100.0, "follower2": 50.0}}]
    assert cons.sends_pending(writes, "follower1", at_s=0.55) == 1
    assert cons.sends_pending(writes, "follower2", at_s=0.55) == 1
    assert cons.predicted_converge(writes, "follower2", last_s=0.6) == pytest.approx(0.3)
    assert cons.predicted_converge(writes, "follower1", last_s=0.7) == 0.0


# --- logs -------------------------------------------------------------------------------------


def write_log(directory, entries):
    directory.mkdir(parents=True)
    path = directory / LOG_FILE_NAME
    path.write_bytes(HEADER + b"".join(encode_record(e) for e in entries))
    return str(path)


def entry(seq, key="k", value=None, op="set"):
    return Entry(seq, op, None if op == "clear" else key, value, float(seq))


def test_log_comparison_accepts_arrival_order_and_counts_its_hazard(tmp_path):
    leader = [entry(1, op="clear"), entry(2, "x", "old"), entry(3, "x", "new"), entry(4, "y", 1)]
    arrival = [leader[0], leader[3], leader[2], leader[1]]
    paths = [write_log(tmp_path / "leader", leader), write_log(tmp_path / "f1", arrival)]
    result = cons.builtin_compare_logs(paths, since_seq=1)
    follower = result["followers"][paths[1]]
    assert result["equal"] and follower["equal"]
    assert follower["out_of_order"] == 2
    assert follower["arrival_order_divergent_keys"] == 1  # x ends "old" if applied as it arrived
    assert result["leader"]["ts_inversions"] == 0 and result["leader"]["records"] == 4
    assert cons.logs_equal(cons.compare_logs(paths)) is True


def test_log_comparison_reports_missing_and_conflicting_entries(tmp_path):
    leader = [entry(1, "a", 1), entry(2, "b", 2), entry(3, "c", 3)]
    follower = [entry(1, "a", 1), entry(3, "c", "other"), entry(3, "c", "other")]
    paths = [write_log(tmp_path / "leader", leader), write_log(tmp_path / "f1", follower)]
    detail = cons.builtin_compare_logs(paths)["followers"][paths[1]]
    assert (detail["missing"], detail["conflicting"], detail["extra"], detail["duplicates"]) == (1, 1, 0, 1)
    assert not detail["equal"]
    assert cons.logs_equal(cons.compare_logs(paths)) is False
    assert cons.logs_equal({"no": "verdict"}) is None


# --- workload against a fake leader -----------------------------------------------------------


class GatedLeader:
    """A fake /write that holds every request until ``limit`` are in flight (or none are left)."""

    def __init__(self, total: int, limit: int) -> None:
        self.total, self.limit = total, limit
        self.started = self.in_flight = self.max_in_flight = 0
        self.gate = asyncio.Event()

    def handler(self):
        fake = self

        class Write(RequestHandler):
            async def post(self):
                body = json.loads(self.request.body)
                fake.started += 1
                seq = fake.started
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                if fake.in_flight == fake.limit or fake.started == fake.total:
                    fake.gate.set()
                gate = fake.gate
                await gate.wait()
                fake.in_flight -= 1
                if fake.in_flight == 0:
                    fake.gate = asyncio.Event()
                self.finish({"success": True, "seq": seq, "confirmations": 2, "key": body["key"],
                             "debug": {"replication_delays_ms": {"10.0.0.1:1": 30.0, "10.0.0.2:1": 10.0,
                                                                 "10.0.0.3:1": 20.0}}})

        return Write


class LeaderHealth(RequestHandler):
    def get(self):
        self.finish({"status": "ok", "role": "leader", "node_id": "leader", "term": 1})


def test_writes_keep_exactly_concurrency_in_flight_and_record_the_draws():
    async def scenario():
        fake = GatedLeader(total=13, limit=4)
        sock, port = bind_unused_port()
        server = HTTPServer(Application([(r"/write", fake.handler()), (r"/health", LeaderHealth)]))
        server.add_sockets([sock])
        client = Client([f"127.0.0.1:{port}"], max_clients=20)
        plan = [PlannedWrite(i, f"key-{i % 3:02d}", f"v{i}") for i in range(13)]
        names = {"10.0.0.1:1": "follower1", "10.0.0.2:1": "follower2", "10.0.0.3:1": "follower3"}
        try:
            rows, _ = await asyncio.wait_for(run_writes(client, plan, 2, 4, names), timeout=30)
        finally:
            client.close()
            server.stop()
        return fake, rows

    fake, rows = asyncio.run(scenario())
    assert fake.max_in_flight == 4
    assert [r["write"] for r in rows] == list(range(13))
    row = rows[0]
    assert json.loads(row["delays_ms"]) == {"follower1": 30.0, "follower2": 10.0, "follower3": 20.0}
    assert row["kth_delay_ms"] == 20.0
    assert row["overhead_ms"] == pytest.approx(row["latency_ms"] - 20.0)
    assert all(r["success"] and r["status"] == 200 for r in rows)
    assert sorted(r["seq"] for r in rows) == list(range(1, 14))  # from the answer node.client kept
    assert all(r["confirmations"] == 2 and r["error"] is None for r in rows)


# --- the leader, wherever it is ---------------------------------------------------------------


def test_endpoints_follow_the_leader_they_are_given():
    ep = make_endpoints("http://127.0.0.1", 9000)
    assert (ep.leader_id, ep.leader, ep.followers[0]) == ("leader", "http://127.0.0.1:9000", "http://127.0.0.1:9001")
    moved = ep.led_by("follower2")
    assert moved.leader == "http://127.0.0.1:9002"
    assert moved.follower_ids == ("leader", "follower1", "follower3", "follower4", "follower5")
    assert moved.followers[0] == "http://127.0.0.1:9000"
    # node.client names the leader by node_id, else by the address it reached it at.
    assert leader_name(ep, Leader("follower3", "127.0.0.1:9003", 2)) == "follower3"
    assert leader_name(ep, Leader(None, "127.0.0.1:9004", None)) == "follower4"
    with pytest.raises(NoLeader, match="none of the nodes"):
        leader_name(ep, Leader("other", "10.0.0.9:8000", 2))
    with pytest.raises(RuntimeError, match="'follower9' is not one of the nodes"):
        ep.led_by("follower9")


def test_follower_names_come_from_the_leaders_status():
    # follower2 leads: its followers are the others in PEERS order; a follower that has
    # answered gives its own id.
    status = {"node_id": "follower2", "followers": {"a:1": {"node_id": None}, "b:1": {"node_id": "follower1"},
                                                    "c:1": {}, "d:1": {}, "e:1": {}}}
    assert follower_names(status) == {"a:1": "leader", "b:1": "follower1", "c:1": "follower3",
                                      "d:1": "follower4", "e:1": "follower5"}
    assert follower_names({"node_id": "leader", "followers": {"x:1": {}}}) == {"x:1": "follower1"}


class InProcessStudyCluster:
    """The study's view of an in-process cluster: node URLs by id, logs in place, nothing to restart."""

    description = "in-process"

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.endpoints = Endpoints({name: f"http://{cluster.address(name)}" for name in cluster.ports})

    def configure(self, quorum: int) -> None:
        pass

    def log_paths(self, workdir: str) -> dict[str, str]:
        return {name: str(self.cluster.tmp_path / name / LOG_FILE_NAME) for name in self.cluster.ports}

    def close(self) -> None:
        pass


@pytest.mark.gen_test(timeout=90)
async def test_study_measures_the_node_that_leads_after_a_promotion(make_cluster, tmp_path):
    async with make_cluster(WRITE_QUORUM="2", MAX_DELAY="20") as cluster:
        await cluster.write("before", 1)
        await cluster.stop("leader")
        status, answer = await promote(cluster, "follower2")
        assert status == 200, answer
        await cluster.start("leader")  # back as a follower of term 2

        async def leader_follows():
            return (await cluster.request("leader", "GET", "/health"))[1]["leader_id"] == "follower2"

        await wait_for(leader_follows, what="the old leader follows follower2")
        study = InProcessStudyCluster(cluster)
        args = argparse.Namespace(writes=12, keys=3, concurrency=4, seed=1, min_delay=0, max_delay=20,
                                  converge_timeout=20.0, poll_interval=0.02)
        writes, rows, facts = await measure_quorum(study, args, 2, tqdm(disable=True))

    assert facts["leader_id"] == "follower2" and study.endpoints.leader_id == "follower2"
    assert study.endpoints.leader == f"http://{cluster.address('follower2')}"
    assert len(writes) == 12 and all(w["success"] and w["status"] == 200 for w in writes)
    assert len({w["seq"] for w in writes}) == 12 and all(w["seq"] > facts["clear_seq"] for w in writes)
    assert all(w["confirmations"] >= 2 for w in writes)
    others = ["leader", "follower1", "follower3", "follower4", "follower5"]
    for w in writes:
        delays = json.loads(w["delays_ms"])
        assert sorted(delays) == sorted(others) and all(0 <= d <= 20 for d in delays.values())
        assert w["kth_delay_ms"] == kth_smallest(delays.values(), 2)
    assert [r["follower"] for r in rows] == others
    assert all(r["converged"] and r["prefix_consistent"] for r in rows)
    add_log_comparison(study, rows, facts, str(tmp_path / "logs"))
    assert facts["logs_equal"] and all(r["logs_equal"] for r in rows)


# --- cluster control and CLI ------------------------------------------------------------------


def test_compose_cluster_maps_the_study_ports_to_compose_variables():
    cluster = ComposeCluster(make_endpoints("http://127.0.0.1", 9000), 5, 500, 7, project="study")
    env = cluster.compose.env
    assert env["LEADER_PORT"] == "9000" and env["FOLLOWER5_PORT"] == "9005"
    assert cluster.compose.project == "study"
    assert node_settings(3, 5, 500, 7) == {"WRITE_QUORUM": "3", "MIN_DELAY": "5", "MAX_DELAY": "500", "DELAY_SEED": "7"}


def test_cli_defaults_and_rejections():
    args = parse_args([])
    assert (args.writes, args.concurrency, args.keys, args.quorums) == (100, 10, 10, [1, 2, 3, 4, 5])
    assert (args.min_delay, args.max_delay, args.local) == (0, 1000, False)
    assert args.output.endswith("analysis/results")
    for bad in (["--quorums", "0"], ["--quorums", "6"], ["--min-delay", "5", "--max-delay", "1"],
                ["--concurrency", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


# --- report from synthetic data ---------------------------------------------------------------

FOLLOWERS = [f"follower{i}" for i in range(1, 6)]


def synthetic_writes() -> pd.DataFrame:
    rows = []
    for quorum, latencies, kth in ((1, [100.0, 200.0, 300.0, 400.0], [90.0, 185.0, 290.0, 375.0]),
                                   (5, [800.0, 900.0, 1000.0, 700.0], [780.0, 890.0, 985.0, 690.0])):
        for i, (latency, k) in enumerate(zip(latencies, kth)):
            rows.append({"quorum": quorum, "write": i, "key": f"key-0{i}", "value": f"q{quorum}-w{i}",
                         "status": 200, "success": True, "seq": 10 * quorum + i, "start_unix": 0.0,
                         "start_s": i * 0.1, "end_s": i * 0.1 + latency / 1000, "latency_ms": latency,
                         "confirmations": quorum,
                         "delays_ms": json.dumps(dict(zip(FOLLOWERS, [k, k + 1, k + 2, k + 3, k + 4]))),
                         "kth_delay_ms": k, "overhead_ms": latency - k, "error": None})
    return pd.DataFrame(rows)


def synthetic_consistency() -> pd.DataFrame:
    rows = []
    for quorum in (1, 5):
        for i, name in enumerate(FOLLOWERS):
            lagging = quorum == 1 and i < 2
            rows.append({"quorum": quorum, "follower": name, "leader_last_seq": 20, "applied_seq": 18 if lagging else 20,
                         "entries_behind": 2 if lagging else 0, "received_seq": 20, "waiting_for_gap": 1 if lagging else 0,
                         "keys_missing": 0, "keys_stale": 2 if lagging else 0, "keys_extra": 0,
                         "keys_differing": 2 if lagging else 0, "identical_at_snapshot": not lagging,
                         "prefix_consistent": True, "snapshot_after_ms": 0.2, "snapshot_done_ms": 12.0,
                         "sends_pending_est": 1 if lagging else 0, "predicted_converge_s": 0.25 if lagging else 0.0,
                         "converge_s": 0.3 if lagging else 0.0, "converged": True,
                         "log_records": 20, "log_missing": 0, "log_extra": 0, "log_conflicting": 0,
                         "log_duplicates": 0, "log_out_of_order": 3, "arrival_order_divergent_keys": 1 if lagging else 0,
                         "logs_equal": True})
    return pd.DataFrame(rows)


def test_report_numbers_come_from_the_data(tmp_path):
    writes, consistency = synthetic_writes(), synthetic_consistency()
    meta = {"cluster": "synthetic", "writes": 4, "concurrency": 2, "keys": 4, "quorums": [1, 5],
            "min_delay_ms": 0, "max_delay_ms": 1000, "followers": 5, "seed": 3, "poll_interval_s": 0.05,
            "converge_timeout_s": 30.0, "fsync": "batch", "log_comparison_source": "test", "wall_s": 12.5}
    info = [{"quorum": q, "clear_seq": 10 * q - 1, "ts_inversions": 0, "ts_ties": 0, "leader_log_records": 20}
            for q in (1, 5)]
    paths = report.write_outputs(writes, consistency, info, meta, str(tmp_path))
    text = (tmp_path / "REPORT.md").read_text()

    # Table rows: k=1 mean 250 ms (theory 1000/6), k=5 mean 850 ms (theory 5000/6).
    assert re.search(r"\| 1 \| 4 \| 0 \| 250\.0 ms \|", text)
    assert re.search(r"\| 5 \| 4 \| 0 \| 850\.0 ms \|", text)
    assert "166.7 ms" in text and "833.3 ms" in text
    assert "from 250.0 ms to 850.0 ms (+600.0 ms)" in text
    assert "overhead added +15.0 ms" in text  # k=1: mean of 10, 15, 10, 25
    assert re.search(r"its answer — k = 1: 16\.", text)  # sends outstanding at the answers: 4 x (5 - 1)
    assert "Measuring took 12.5 s" in text
    # Writes 0-1 of each quorum (10, 15 and 20, 10 ms) against writes 2-3 (10, 25 and 15, 10 ms).
    assert "do not stand out (median overhead 12.5 ms against 12.5 ms for the rest)" in text
    assert "In 5 of 5 follower snapshots" in text
    for name in ("latency_vs_quorum.png", "latency_distribution.png", "overhead.png", "consistency.png"):
        assert f"({name})" in text and (tmp_path / name).stat().st_size > 0
    assert "NaN" not in text and "nan ms" not in text

    summary = json.loads((tmp_path / "summary.json").read_text())
    by_q = {q["quorum"]: q for q in summary["quorums"]}
    assert by_q[1]["latency_mean_ms"] == pytest.approx(250.0)
    assert by_q[5]["theory_ms"] == pytest.approx(5000 / 6)
    assert by_q[1]["identical"] == 3 and by_q[5]["identical"] == 5
    assert pd.read_csv(paths["writes"]).shape[0] == 8


def test_report_says_when_the_first_writes_carry_the_tail():
    writes = synthetic_writes()
    writes.loc[writes["write"] < 2, "overhead_ms"] = [40.0, 44.0, 42.0, 46.0]
    text = report.first_burst_text(writes, {"concurrency": 2})
    assert "carry much of the tail: median overhead 43.0 ms against 12.5 ms for the rest" in text


# --- end to end on the local cluster ----------------------------------------------------------


@pytest.mark.cluster
def test_study_end_to_end_on_the_local_cluster(tmp_path):
    out = tmp_path / "results"
    paths = main(["--local", "--base-port", str(free_port_block()), "--writes", "20", "--concurrency", "5",
                  "--quorums", "1", "5", "--min-delay", "0", "--max-delay", "100", "--output", str(out),
                  "--data-dir", str(tmp_path / "data"), "--no-progress"])

    writes = pd.read_csv(paths["writes"])
    assert len(writes) == 40 and sorted(writes["quorum"].unique()) == [1, 5]
    assert writes["success"].all() and (writes["status"] == 200).all()
    assert (writes["confirmations"] >= writes["quorum"]).all()
    assert writes["seq"].is_unique
    for row in writes.itertuples():
        delays = json.loads(row.delays_ms)
        assert sorted(delays) == FOLLOWERS and all(0 <= d <= 100 for d in delays.values())
        assert row.kth_delay_ms == kth_smallest(delays.values(), row.quorum)
        assert row.overhead_ms == pytest.approx(row.latency_ms - row.kth_delay_ms)
        # No write can gather k confirmations before k of its delays have run out.
        assert row.overhead_ms > -1.0

    consistency = pd.read_csv(paths["consistency"])
    assert len(consistency) == 10
    assert consistency["converged"].all() and consistency["logs_equal"].all()
    assert (consistency[["log_missing", "log_extra", "log_conflicting", "log_duplicates"]] == 0).all().all()
    assert consistency["prefix_consistent"].all()  # any snapshot is a prefix of the leader's history
    full = consistency[consistency["quorum"] == 5]
    # Every entry confirmed by all five followers: nothing can be missing right after the writes.
    assert (full["keys_differing"] == 0).all() and (full["entries_behind"] == 0).all()

    with open(paths["summary"]) as f:
        summary = json.load(f)
    assert [q["quorum"] for q in summary["quorums"]] == [1, 5]
    assert all(q["logs_equal"] for q in summary["quorums"])
    with open(paths["report"]) as f:
        assert "## 5. What would break convergence" in f.read()
    for key in ("latency", "distribution", "overhead", "consistency"):
        with open(paths[f"figure_{key}"], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
