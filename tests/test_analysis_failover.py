"""The failover study (`python -m analysis.failover`): its pure parts, and one tiny study on the
local cluster with a real etcd."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from analysis.failover import main, parse_args
from analysis.failover_model import (
    ACKNOWLEDGED,
    REFUSED,
    UNKNOWN,
    failover_table,
    longest_gap,
    most_followers_down,
    replay,
    run_row,
    timings,
    write_fates,
)
from analysis.failover_report import renewal_interval_s, section_lost
from node.core.terms import promise_quorum
from node.log import Entry
from tests.failover_support import require_etcd
from tests.net import free_port_block

# --- unavailability ---------------------------------------------------------------------------


def test_the_gap_runs_from_the_last_acknowledgment_before_the_kill_to_the_next():
    gap = longest_gap([-0.3, -0.2, -0.1, 2.0, 2.1, 3.5, 3.6], kill_s=0.0, writes_end_s=3.7, writes_start_s=-2.0)
    assert (gap.start_s, gap.end_s, gap.censored) == (-0.1, 2.0, False)
    assert gap.length_s == pytest.approx(2.1)


def test_a_later_gap_counts_when_it_is_longer_as_at_w5_waiting_for_the_old_leader():
    gap = longest_gap([-0.1, 1.0, 1.1, 4.0, 4.1], kill_s=0.0, writes_end_s=4.2, writes_start_s=-2.0)
    assert (gap.start_s, gap.end_s) == (1.1, 4.0)


def test_gaps_before_the_kill_do_not_count():
    gap = longest_gap([-5.0, -0.5, -0.4, 0.6], kill_s=0.0, writes_end_s=0.7, writes_start_s=-6.0)
    assert (gap.start_s, gap.end_s) == (-0.4, 0.6)


def test_no_acknowledgment_after_the_kill_gives_a_censored_gap_to_the_end_of_the_writes():
    gap = longest_gap([-0.5, -0.1], kill_s=0.0, writes_end_s=3.0, writes_start_s=-1.0)
    assert (gap.start_s, gap.end_s, gap.censored) == (-0.1, 3.0, True)


def test_without_any_acknowledgment_before_the_kill_the_gap_starts_with_the_writes():
    gap = longest_gap([1.5, 1.6], kill_s=0.0, writes_end_s=1.7, writes_start_s=-1.0)
    assert (gap.start_s, gap.end_s) == (-1.0, 1.5)


def test_timings_split_the_failover_into_lease_election_and_first_acknowledgment():
    events = [{"t_s": -2.0, "node": "etcd", "event": "key", "term": None, "detail": "leader"},
              {"t_s": 0.1, "node": "leader", "event": "down", "term": None, "detail": None},
              {"t_s": 1.5, "node": "etcd", "event": "key", "term": None, "detail": None},
              {"t_s": 1.9, "node": "etcd", "event": "key", "term": None, "detail": "follower2"},
              {"t_s": 2.0, "node": "follower2", "event": "leads", "term": 2, "detail": "follower2"},
              {"t_s": 4.5, "node": "leader", "event": "follows", "term": 2, "detail": "follower2"}]
    writes = [_write(0, ACKNOWLEDGED, -0.1, term=1), _write(1, ACKNOWLEDGED, 2.3, term=2), _write(2, REFUSED, 1.0)]
    found = timings(events, writes, "leader")
    assert found["key_free_s"] == 1.5 and found["elected_s"] == 2.0 and found["first_ack_s"] == 2.3
    assert found["election_s"] == pytest.approx(0.5) and found["elected_to_first_ack_s"] == pytest.approx(0.3)
    assert found["old_leader_back_s"] == 4.5 and found["key_freed_by"] == "lease expired"


def test_a_key_seen_already_taken_still_marks_when_it_stopped_naming_the_old_leader():
    events = [{"t_s": 1.7, "node": "etcd", "event": "key", "term": None, "detail": "follower1"},
              {"t_s": 1.2, "node": "leader", "event": "leads", "term": 1, "detail": "leader"}]
    found = timings(events, [], "leader")
    assert found["key_free_s"] == 1.7 and found["key_freed_by"] == "old leader restarted"
    assert math.isnan(found["elected_s"]) and math.isnan(found["first_ack_s"])


# --- the history check ------------------------------------------------------------------------


def _write(i, outcome, end_s, term=None, seq=None, key="key-00"):
    return {"write": i, "key": key, "value": f"v{i}", "outcome": outcome, "start_s": end_s - 0.05, "end_s": end_s,
            "term": term, "seq": seq}


def _entry(seq, value, term=1, key="key-00", op="set"):
    return Entry(seq, op, key, value, 0.0, term)


def test_an_acknowledged_write_must_be_at_its_seq_whatever_its_term_there():
    writes = [_write(0, ACKNOWLEDGED, -1, 1, seq=1), _write(1, ACKNOWLEDGED, -1, 1, seq=2),
              _write(2, ACKNOWLEDGED, -1, 1, seq=3), _write(3, UNKNOWN, 0.1), _write(4, REFUSED, 0.5)]
    log = {1: _entry(1, "v0"), 2: _entry(2, "v1", term=2),  # written again in the new term: kept
           3: _entry(3, "v3"), 4: _entry(4, "v2")}  # v2 at another seq than acknowledged: lost
    fate = write_fates(writes, log, rolled_back=[])
    assert fate.lost == ["v2"]
    assert fate.unknown_applied == 1 and fate.refused_applied == []
    assert fate.in_log == {"v0", "v1", "v2", "v3"}


def test_a_refused_write_in_the_log_is_reported():
    fate = write_fates([_write(0, REFUSED, 0.2)], {1: _entry(1, "v0")}, [])
    assert fate.refused_applied == ["v0"] and fate.lost == []


def test_rolled_back_writes_are_split_into_dropped_and_written_again():
    writes = [_write(0, ACKNOWLEDGED, -1, 1, seq=1), _write(1, UNKNOWN, 0.0), _write(2, ACKNOWLEDGED, -1, 1, seq=3),
              _write(3, UNKNOWN, 0.0)]
    log = {1: _entry(1, "v0", term=2), 2: _entry(2, None, term=2, key=None, op="noop")}
    rolled = [_entry(1, "v0"), _entry(2, "v1"), _entry(3, "v2"), _entry(4, "other run's write")]
    fate = write_fates(writes, log, rolled)
    assert fate.rolled_back == ["v1", "v2"] and fate.rolled_back_kept == 1
    assert fate.rolled_back_acknowledged == ["v2"]
    row = run_row(writes, [], fate, "leader")
    assert (row["rolled_back"], row["rolled_back_acknowledged"], row["rolled_back_unknown"]) == (2, 1, 1)
    assert (row["acknowledged"], row["unknown"], row["refused"], row["lost"]) == (2, 2, 0, 1)


def test_replay_applies_the_log_in_seq_order():
    log = {3: _entry(3, "c", key="a"), 1: _entry(1, "a", key="a"), 2: _entry(2, "b", key="b"),
           4: Entry(4, "delete", "b", None, 0.0), 5: _entry(5, None, key=None, op="noop")}
    assert replay(log) == {"a": "c"}
    assert replay({**log, 6: Entry(6, "clear", None, None, 0.0), 7: _entry(7, "z", key="z")}) == {"z": "z"}


# --- when failover is possible ----------------------------------------------------------------


def test_the_possibility_table_follows_the_promotion_rule():
    table = failover_table(5)
    assert len(table) == 25
    for row in table:
        answering = 5 - row["followers_down"]
        assert row["needed"] == promise_quorum(5, row["W"])
        assert row["elected"] == (answering >= max(5 - row["W"] + 1, 3)), row
        assert row["acknowledges"] == (row["elected"] and answering - 1 >= row["W"]), row
    assert most_followers_down(table) == {1: 0, 2: 1, 3: 2, 4: 2, 5: 2}
    assert most_followers_down(table, "acknowledges") == {1: 0, 2: 1, 3: 1, 4: 0, 5: -1}
    blocked = next(r for r in table if r["W"] == 1 and r["followers_down"] == 1)
    assert "only 4 of the 5" in blocked["reason"]


def test_the_lease_is_renewed_every_third_of_the_ttl():
    assert renewal_interval_s(3.0) == pytest.approx(1.0)


def test_the_report_says_lost_writes_when_there_are_some():
    base = {"W": 3, "ttl_ms": 2000, "repeat": 1, "acknowledged": 100, "refused_applied": 0, "logs_equal": True,
            "replicas_match": True}
    fine = section_lost(pd.DataFrame([{**base, "lost": 0}]), [3], 5)
    assert "**No acknowledged write was lost**: all 100 acknowledged writes" in fine
    assert "W = 3: 3 promises, overlap ≥ 1" in fine
    bad = section_lost(pd.DataFrame([{**base, "lost": 2}]), [3], 5)
    assert "**2 of 100 acknowledged writes were lost**, in the runs W=3 TTL=2000 #1" in bad
    assert "No acknowledged write was lost" not in bad


def test_cli_defaults_and_rejections(capsys):
    args = parse_args([])
    assert args.quorums == [1, 2, 3, 4, 5] and args.ttls == [2000, 4000] and args.repeats >= 1
    for bad in (["--ttls", "2500"], ["--ttls", "1000"], ["--quorums", "6"], ["--repeats", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    capsys.readouterr()


# --- end to end on the local cluster ----------------------------------------------------------


@pytest.fixture(scope="module")
def etcd_installed():
    require_etcd("the failover study")


@pytest.mark.cluster
def test_a_tiny_study_writes_its_results_and_loses_nothing(tmp_path, etcd_installed):
    out = tmp_path / "failover"
    # The default restart delay (LEADER_TTL + 1 s): a leader back within its lease would take its
    # key back, and there would be no failover to measure.
    paths = main(["--quorums", "3", "--ttls", "2000", "--repeats", "1", "--before", "1", "--after", "1",
                  "--out", str(out), "--base-port", str(free_port_block())])

    runs = pd.read_csv(paths["failover"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["lost"] == 0 and run["rolled_back_acknowledged"] == 0 and run["refused_applied"] == 0
    assert run["logs_equal"] and run["replicas_match"]
    assert run["new_term"] >= 2 and run["new_leader"] != "leader"
    # The key outlives the killed leader by at most its lease (etcd checks expiry twice a second).
    assert 0 < run["key_free_s"] <= 2.0 + 1.0
    # The longest gap is the failover's: it spans the key's expiry and lasts until the new term acknowledges.
    assert run["unavailable_from_s"] < run["key_free_s"] < run["first_ack_s"] <= run["unavailable_to_s"]
    assert not run["unavailable_censored"]

    writes = pd.read_csv(paths["writes"])
    assert len(writes) == run["attempted"] and writes["value"].is_unique
    assert set(writes["outcome"]) <= {ACKNOWLEDGED, UNKNOWN, REFUSED}
    acknowledged = writes[writes["outcome"] == ACKNOWLEDGED]
    assert (acknowledged["end_s"] < 0).any() and (acknowledged["term"] >= 2).any()
    assert acknowledged["in_final_log"].all() and not acknowledged["rolled_back"].any()

    leaders = pd.read_csv(paths["leaders"])
    leads = leaders[(leaders["event"] == "leads") & (leaders["t_s"] > 0)]
    assert run["new_leader"] in set(leads["node"])

    with open(paths["demonstration"]) as f:
        shown = json.load(f)
    assert shown["any_leader"] is False and shown["recovered_after_s"] is not None
    assert all("only 4 of the 5" in text for text in shown["decisions"].values()), shown["decisions"]

    with open(paths["report"]) as f:
        report = f.read()
    assert "**No acknowledged write was lost**" in report and "## When failover is impossible" in report
    for key in ("unavailability", "timeline"):
        with open(paths[f"figure_{key}"], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
