"""The compaction study (`python -m analysis.compaction`): its growth ratios and verdicts, its
helpers, and one tiny study end to end on the local cluster."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import sys

import pandas as pd
import pytest

from analysis.compaction import (
    COMPACTION,
    NO_COMPACTION,
    Load,
    cli,
    dir_bytes,
    main,
    node_env,
    parse_args,
    parse_checkpoints,
    poll,
    rss_bytes,
    study_configs,
)
from analysis.compaction_report import (
    GROWTH_METRICS,
    code_line,
    compaction_seen,
    growth,
    memory_line,
    overall,
    same_run,
    verdicts,
)
from tests.net import free_port_block


def rows(config: str, metric: str, values: dict[int, float], node: str = "leader") -> list[dict]:
    return [{"config": config, "writes": w, "metric": metric, "node": node, "value": v} for w, v in values.items()]


# --- ratios and verdicts ----------------------------------------------------------------------


def test_growth_is_the_last_checkpoint_over_the_first():
    frame = pd.DataFrame(rows(COMPACTION, "leader_rss_bytes", {100: 50.0, 500: 55.0, 1000: 60.0}))
    g = growth(frame).iloc[0]
    assert (g["first"], g["last"], g["ratio"]) == (50.0, 60.0, pytest.approx(1.2))


def test_a_ratio_of_exactly_the_limit_is_within_and_just_above_is_not():
    frame = pd.DataFrame(rows(COMPACTION, "leader_rss_bytes", {1: 100.0, 2: 120.0})
                         + rows(NO_COMPACTION, "leader_rss_bytes", {1: 100.0, 2: 120.1}))
    table = verdicts(growth(frame)).set_index("config")
    assert table.loc[COMPACTION, "within"] and not table.loc[NO_COMPACTION, "within"]


def test_the_data_directory_is_judged_by_the_node_that_grew_most():
    frame = pd.DataFrame(rows(COMPACTION, "data_dir_bytes", {1: 100.0, 2: 110.0}, "leader")
                         + rows(COMPACTION, "data_dir_bytes", {1: 100.0, 2: 300.0}, "follower5"))
    row = verdicts(growth(frame)).iloc[0]
    assert (row["node"], row["ratio"], bool(row["within"])) == ("follower5", 3.0, False)


def test_nothing_at_the_first_checkpoint_gives_no_ratio_and_no_verdict():
    frame = pd.DataFrame(rows(COMPACTION, "leader_restart_s", {1: 0.0, 2: 0.5}))
    row = verdicts(growth(frame)).iloc[0]
    assert math.isnan(row["ratio"]) and row["within"] is None
    assert "no metric could be judged" in overall(verdicts(growth(frame)), COMPACTION)


def test_the_overall_verdict_names_what_grew_and_what_stayed_within():
    frame = pd.DataFrame(rows(COMPACTION, "leader_rss_bytes", {1: 100.0, 2: 105.0})
                         + rows(COMPACTION, "data_dir_bytes", {1: 100.0, 2: 150.0}))
    line = overall(verdicts(growth(frame)), COMPACTION)
    assert line.startswith("Verdict for compaction: does not stay within 20%: data directory grew")
    assert "within it: leader memory (VmRSS)" in line
    frame = pd.DataFrame(rows(COMPACTION, "leader_rss_bytes", {1: 100.0, 2: 105.0}))
    assert overall(verdicts(growth(frame)), COMPACTION) == (
        "Verdict for compaction: stays within 20% on all 1 metrics (ratio <= 1.2).")


def test_metrics_that_are_not_growth_metrics_get_no_verdict():
    frame = pd.DataFrame(rows(COMPACTION, "snapshot_files", {1: 0, 2: 3}) + rows(COMPACTION, "write_rate_per_s", {1: 9, 2: 1}))
    assert growth(frame).empty and verdicts(growth(frame)).empty


def test_the_same_run_comparison_adds_the_six_data_directories():
    frame = pd.DataFrame(rows(COMPACTION, "data_dir_bytes", {1: 1.0, 2: 10.0}, "leader")
                         + rows(COMPACTION, "data_dir_bytes", {1: 1.0, 2: 10.0}, "follower1")
                         + rows(NO_COMPACTION, "data_dir_bytes", {1: 1.0, 2: 40.0}, "leader")
                         + rows(NO_COMPACTION, "data_dir_bytes", {1: 1.0, 2: 40.0}, "follower1"))
    row = same_run(frame, COMPACTION, NO_COMPACTION).iloc[0]
    assert (row["with"], row["without"], row["ratio"]) == (20.0, 80.0, 0.25)


def test_without_snapshot_files_the_report_says_the_nodes_did_not_compact():
    frame = pd.DataFrame(rows(COMPACTION, "snapshot_files", {1: 0, 2: 0}) + rows(NO_COMPACTION, "snapshot_files", {1: 0, 2: 0}))
    assert "these nodes did not compact" in compaction_seen(frame, COMPACTION, NO_COMPACTION)
    frame = pd.DataFrame(rows(COMPACTION, "snapshot_files", {1: 1, 2: 2}) + rows(NO_COMPACTION, "snapshot_files", {1: 0, 2: 1}))
    seen = compaction_seen(frame, COMPACTION, NO_COMPACTION)
    assert "held up to 2 snapshot file(s)" in seen and "SNAPSHOT_EVERY=0 was not honoured" in seen


def test_the_memory_line_sets_the_running_leader_against_the_restarted_one():
    frame = pd.DataFrame(rows(COMPACTION, "leader_rss_bytes", {1: 2**20, 2: 3 * 2**20})
                         + rows(COMPACTION, "leader_rss_restarted_bytes", {1: 2**20, 2: 2 * 2**20}))
    assert memory_line(frame, COMPACTION) == ("At 2 writes, compaction: the leader's VmRSS was 3.0 MiB before its "
                                              "restart and 2.0 MiB right after it (×1.50).")
    assert memory_line(frame, NO_COMPACTION) == ""


def test_the_report_says_when_the_node_code_changed_during_the_run():
    before = {"commit": "abc1234", "hash": "111", "modified": "0"}
    assert code_line(before, before) == "Node code: commit abc1234 (node/**/*.py hash 111)."
    changed = code_line({**before, "modified": "3"}, {**before, "hash": "222"})
    assert "with 3 file(s) under node/ modified" in changed and "**node/ changed while the study ran**" in changed


# --- settings and helpers ---------------------------------------------------------------------


def test_checkpoints_are_increasing_counts():
    assert parse_checkpoints("20000,200000") == (20000, 200000)
    for bad in ("20000", "200,100", "0,10", "a,b"):
        with pytest.raises(Exception, match="give at least two|not a comma-separated"):
            parse_checkpoints(bad)
    assert parse_args([]).checkpoints == (20000, 200000)
    assert parse_args(["--quick"]).checkpoints == (2000, 20000)


def test_the_compacted_configuration_leaves_the_nodes_defaults_unless_told():
    no, yes = study_configs(parse_args([]))
    assert no.settings == {"SNAPSHOT_EVERY": "0"} and yes.settings == {}
    env = node_env(yes, "ERROR", {"SNAPSHOT_EVERY": "7", "WRITE_QUORUM": "5", "MAX_DELAY": "900", "HOME": "/h"})
    assert "SNAPSHOT_EVERY" not in env and "WRITE_QUORUM" not in env
    assert (env["MIN_DELAY"], env["MAX_DELAY"], env["HOME"]) == ("0", "0", "/h")
    _, told = study_configs(parse_args(["--snapshot-every", "100", "--retain-entries", "50"]))
    assert told.settings == {"SNAPSHOT_EVERY": "100", "RETAIN_ENTRIES": "50"}


def test_each_write_carries_a_value_of_the_size_asked_for():
    body = json.loads(Load(keys=100, value_bytes=1024, max_errors=0).body(12345))
    assert body["key"] == "key-045" and len(body["value"]) == 1024 and body["value"].startswith("0000012345")


def test_sizes_add_every_file_under_the_directory(tmp_path):
    (tmp_path / "snapshots").mkdir()
    (tmp_path / "replication.log").write_bytes(b"x" * 1000)
    (tmp_path / "snapshots" / "1.snap").write_bytes(b"y" * 24)
    assert dir_bytes(str(tmp_path)) == 1024
    assert rss_bytes(os.getpid()) > 1 << 20


def test_a_wait_that_times_out_names_what_it_waited_for():
    async def never() -> bool:
        return False

    with pytest.raises(RuntimeError, match=r"the leader leads: not within 0.2 s \(role follower\)"):
        asyncio.run(poll(never, 0.2, "the leader leads", lambda: "role follower"))


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_a_tiny_study_measures_every_metric_for_both_configurations(tmp_path):
    out = tmp_path / "out"
    paths = main(["--checkpoints", "200,1000", "--snapshot-every", "100", "--out", str(out),
                  "--base-port", str(free_port_block()), "--work-dir", str(tmp_path / "data")])
    frame = pd.read_csv(paths["csv"])
    assert list(frame.columns) == ["config", "writes", "metric", "node", "value"]
    for config in (NO_COMPACTION, COMPACTION):
        for writes in (200, 1000):
            here = frame[(frame["config"] == config) & (frame["writes"] == writes)]
            assert set(GROWTH_METRICS) | {"leader_rss_restarted_bytes", "snapshot_files"} <= set(here["metric"])
            assert len(here[here["metric"] == "data_dir_bytes"]) == 6
            assert here[here["metric"] == "leader_last_seq"]["value"].item() == writes
            assert (here[here["metric"].isin(GROWTH_METRICS)]["value"] > 0).all()
    report = (out / "REPORT.md").read_text()
    lines = re.findall(r"^- (no compaction|compaction), .*: \*\*(within 20%|grows by more than 20%)\*\*$", report, re.M)
    assert len(lines) == 2 * len(GROWTH_METRICS)
    assert re.search(r"^Verdict for compaction: (stays|does not stay) within 20%", report, re.M)
    assert re.search(r"^Verdict for no compaction: (stays|does not stay) within 20%", report, re.M)
    assert "the leader's VmRSS was" in report
    assert "compaction: SNAPSHOT_EVERY=100" in report and f"on {os.cpu_count()} CPU(s)" in report
    assert os.path.getsize(paths["figure"]) > 10_000


def test_a_cluster_that_cannot_start_ends_the_tool_with_the_cause(tmp_path, monkeypatch):
    base = free_port_block()
    monkeypatch.setattr(sys, "argv", ["analysis.compaction", "--checkpoints", "10,20", "--base-port", str(base),
                                      "--out", str(tmp_path)])
    with socket.socket() as taken, pytest.raises(SystemExit) as ended:
        taken.bind(("127.0.0.1", base))
        taken.listen()
        cli()
    assert re.match(rf"error: the cluster for 'no compaction' did not start: port {base} on 127.0.0.1 is taken",
                    str(ended.value.code))
