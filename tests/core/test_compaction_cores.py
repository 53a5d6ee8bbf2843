"""The roles' cores after a snapshot: what the leader keeps and serves, what a follower drops,
and a follower fetching a snapshot counting towards no quorum (pure, no I/O)."""

import pytest

from node.core.compaction import needs_snapshot
from node.core.following import FollowerCore
from node.core.leading import LeaderCore, LeaderLogError
from node.log import Entry, fingerprint
from node.store import Store, build_state


def entry(seq: int, key: str = "k", op: str = "set", term: int = 1) -> Entry:
    return Entry(seq=seq, op=op, key=key, value=seq, ts=0.0, term=term)


def leader(entries=(), base_seq=0, followers=("f1", "f2")) -> LeaderCore:
    return LeaderCore(list(followers), quorum=1, timeout_ms=1000, min_delay_ms=0, max_delay_ms=0,
                      entries=list(entries), base_seq=base_seq)


def test_a_leader_starts_from_the_entries_after_its_snapshot():
    core = leader([entry(s) for s in range(8, 12)], base_seq=10)  # 8..10 kept for followers
    assert (core.first_seq, core.last_seq) == (8, 11)
    assert core.number("set", "k", 1, 0.0).seq == 12
    assert [e.seq for e in core.entries_between(9, None, 100)] == [10, 11]
    assert [e.seq for e in core.entries_between(0, None, 100)] == [8, 9, 10, 11]  # what is kept
    assert [e.seq for e in core.entries_between(8, 10, 1)] == [9]


def test_a_leader_with_only_a_snapshot_numbers_after_it():
    core = leader([], base_seq=500)
    assert (core.first_seq, core.last_seq) == (501, 500)
    assert core.number("set", "k", 1, 0.0).seq == 501


@pytest.mark.parametrize("entries, base, words", [
    ([entry(s) for s in range(12, 14)], 10, "starts at seq 12"),  # seq 11 is nowhere
    ([entry(1), entry(3)], 0, "jumps from seq 1 to 3"),
])
def test_a_leader_log_with_a_hole_is_refused(entries, base, words):
    with pytest.raises(LeaderLogError, match=words):
        leader(entries, base_seq=base)


def test_compact_forgets_the_entries_before_the_seq_kept_and_never_the_last():
    core = leader([entry(s) for s in range(1, 21)])
    assert core.compact(15) == 14 and core.first_seq == 15 and core.last_seq == 20
    assert core.compact(10) == 0  # already gone
    assert core.compact(99) == 6 and core.last_seq == 20 and core.entries == []
    assert core.number("set", "k", 1, 0.0).seq == 21


def test_a_pull_after_what_was_compacted_away_needs_a_snapshot():
    core = leader([entry(s) for s in range(1, 21)])
    core.compact(11)
    assert core.pulled("f1", after=10, address="f1") is True  # needs 11: kept
    assert core.pulled("f1", after=9, address="f1") is False  # needs 10: compacted
    assert needs_snapshot(10, 11) and not needs_snapshot(11, 11)


def test_a_follower_installing_a_snapshot_confirms_nothing_towards_the_quorum_until_it_pulls_again():
    core = leader()
    core.compact(1)
    e = core.number("set", "k", 1, 0.0)
    core.append(e, b"{}", now=0.0)
    core.installing("f1", True)
    for batch in core.ready(now=0.0).sends:
        pass
    assert core.answered("f1", applied_seq=1, node_id="f1", now=0.01) == []  # a learner's confirmation
    assert core.pulled("f1", after=1, address="f1") is True  # back on the log: a full follower
    assert core.progress["f1"].installing is False
    assert core.answered("f2", applied_seq=1, node_id="f2", now=0.02) == [(1, 1)]


def test_a_follower_drops_what_its_snapshot_holds_and_keeps_what_lies_beyond():
    core = FollowerCore(Store())
    core.replay([(entry(s), fingerprint(entry(s))) for s in (1, 2, 3, 5)])
    assert core.compact(3) == 3
    assert sorted(core.held) == [5] and core.applied_seq == 3
    with pytest.raises(ValueError, match="ahead of the applied seq"):
        core.compact(4)


def test_a_follower_that_installs_a_snapshot_applies_what_it_held_beyond_it():
    store = Store()
    core = FollowerCore(store)
    core.replay([(entry(s, key=f"k{s}"), fingerprint(entry(s, key=f"k{s}"))) for s in (1, 7, 8, 10)])
    assert store.applied_seq == 1
    store.restore(build_state({}, [entry(s, key=f"k{s}") for s in range(1, 7)]), 6)  # the leader's, at seq 6
    core.installed(6)
    assert store.applied_seq == 8 and sorted(core.held) == [7, 8, 10] and core.beyond_applied() == {10}
    assert store.get("k5") == (5, 5) and store.get("k8") == (8, 8)


def test_a_snapshot_state_is_the_previous_one_with_the_entries_applied():
    base = build_state({}, [entry(1, "a"), entry(2, "b")])
    later = build_state(base, [entry(3, "a"), entry(4, "b", op="delete"), entry(5, "c")])
    assert later == {"a": [3, 3], "c": [5, 5]}
    assert build_state(later, [entry(6, None, op="clear")]) == {}
    assert base == {"a": [1, 1], "b": [2, 2]}  # untouched


def test_a_store_reset_goes_back_to_its_snapshot():
    store = Store()
    store.base_loader = lambda: ({"a": ["x", 4]}, 4)
    store.apply(Entry(1, "set", "z", 1, 0.0))
    store.reset()
    assert store.applied_seq == 4 and store.get("a") == ("x", 4) and "z" not in store
    store.apply(entry(5, "b"))
    assert store.export() == {"a": ["x", 4], "b": [5, 5]}


def test_fingerprints_below_a_snapshot_are_forgotten_and_the_rest_kept():
    from node.log import Fingerprints

    prints = Fingerprints()
    for seq in range(1, 11):
        prints.set(seq, seq * 7)
    prints.set(10 + Fingerprints.DENSE_GROWTH * 2, 99)  # far ahead: the sparse part
    prints.forget_through(6)
    assert [prints.get(s) for s in (5, 6, 7, 10)] == [0, 0, 49, 70]
    prints.set(3, 1)  # below what was forgotten: nothing to compare with any more
    assert prints.get(3) == 0
    prints.set(12, 5)
    assert prints.get(12) == 5 and prints.get(10 + Fingerprints.DENSE_GROWTH * 2) == 99
    prints.forget_through(10 + Fingerprints.DENSE_GROWTH * 2)
    assert prints.get(10 + Fingerprints.DENSE_GROWTH * 2) == 0 and prints.get(12) == 0


def test_a_learner_gets_every_entry_but_confirms_nothing_and_a_removed_follower_gets_no_more():
    core = leader(followers=("f1", "f2"))
    core.set_followers(["f1", "f2", "f3"], learners={"f3"})
    e = core.number("set", "k", 1, 0.0)
    core.append(e, b"{}", now=0.0)
    assert sorted(b.address for b in core.ready(now=0.0).sends) == ["f1", "f2", "f3"]
    assert core.answered("f3", applied_seq=1, node_id="f3", now=0.01) == []  # a learner's copy counts for nothing
    assert core.committed == 0
    assert core.answered("f1", applied_seq=1, node_id="f1", now=0.01) == [(1, 1)]
    core.set_followers(["f1", "f3"], learners=set())  # f2 removed, f3 a full follower
    assert "f2" not in core.channels and core.progress["f3"].learner is False
    e = core.number("set", "k", 2, 0.0)
    core.append(e, b"{}", now=0.1)
    assert sorted(b.address for b in core.ready(now=0.1).sends) == ["f1", "f3"]


def test_a_follower_that_installed_a_snapshot_counts_again_only_once_caught_up_from_the_log():
    from node.core.leading import CAUGHT_UP_LAG

    core = leader([entry(s) for s in range(1, 1001)])
    core.compact(700)
    core.installing("f1", True)
    assert core.pulled("f1", after=899 - CAUGHT_UP_LAG, address="f1") is True  # the log serves it ...
    assert core.progress["f1"].installing is True  # ... but it is still catching up
    core.pulled("f1", after=1000 - CAUGHT_UP_LAG, address="f1")
    assert core.progress["f1"].installing is False
