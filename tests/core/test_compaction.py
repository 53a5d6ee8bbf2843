"""The rules of log compaction: when to snapshot, what the leader keeps, who needs a snapshot."""

from __future__ import annotations

import pytest

from node.core.compaction import first_to_keep, needs_snapshot, snapshot_due


@pytest.mark.parametrize("applied, last, every, due", [
    (9_999, 0, 10_000, False), (10_000, 0, 10_000, True), (25_000, 20_000, 10_000, False),
    (30_000, 20_000, 10_000, True), (50, 0, 0, False),  # 0: automatic snapshots off
])
def test_a_snapshot_is_due_every_n_applied_entries(applied, last, every, due):
    assert snapshot_due(applied, last, every) is due


@pytest.mark.parametrize("matches, live, keep, why", [
    ({"f1": 1000, "f2": 1000}, {"f1", "f2"}, 1001, "everyone holds the snapshot's entries: keep nothing before it"),
    ({"f1": 1000, "f2": 950}, {"f1", "f2"}, 951, "a live follower lacks 951..: keep them for it"),
    ({"f1": 1000, "f2": 10}, {"f1", "f2"}, 901, "too far behind: keep at most 200 entries, it gets the snapshot"),
    ({"f1": 1000, "f2": 10}, {"f1"}, 1001, "a follower that is down does not hold the log back"),
    ({}, set(), 1001, "no follower known: the snapshot covers it all"),
])
def test_the_leader_keeps_what_its_live_followers_lack_up_to_a_bound(matches, live, keep, why):
    assert first_to_keep(snapshot_seq=1000, matches=matches, live=live, last_seq=1100, max_retained=200) == keep, why


def test_nothing_past_the_snapshot_is_ever_dropped():
    assert first_to_keep(snapshot_seq=500, matches={"f1": 1100}, live={"f1"}, last_seq=1100, max_retained=10) == 501


@pytest.mark.parametrize("follower_next, first_kept, needs", [(951, 951, False), (950, 951, True), (2000, 951, False)])
def test_a_follower_needs_a_snapshot_once_its_next_entry_is_gone(follower_next, first_kept, needs):
    assert needs_snapshot(follower_next, first_kept) is needs
