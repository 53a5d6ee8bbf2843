"""Membership changes, pure: learners, one change at a time, W never above the followers."""

import pytest

from node.core.membership import (
    Member,
    Membership,
    MembershipError,
    add,
    change_allowed,
    learner_ready,
    promote_learner,
    remove,
)

SIX = Membership.of([("leader", "l:8000")] + [(f"follower{i}", f"f{i}:8000") for i in range(1, 6)])


def test_a_new_member_joins_as_a_learner_and_counts_once_promoted():
    m = add(SIX, "follower6", "f6:8000")
    assert m.get("follower6") == Member("follower6", "f6:8000", learner=True)
    assert "follower6" not in m.voters("leader") and m.learners() == ("follower6",)
    assert ("follower6", "f6:8000") in m.peers  # it gets every entry all the same
    m = promote_learner(m, "follower6")
    assert "follower6" in m.voters("leader") and len(m.voters("leader")) == 6


@pytest.mark.parametrize("node_id, address, words", [
    ("follower2", "f9:8000", "is a member already"),
    ("follower9", "f3:8000", "is follower3's"),
    ("", "f9:8000", "non-empty node_id"),
])
def test_an_add_that_would_clash_is_refused(node_id, address, words):
    with pytest.raises(MembershipError, match=words):
        add(SIX, node_id, address)


def test_remove_refuses_the_leader_and_a_cut_below_the_write_quorum():
    with pytest.raises(MembershipError, match="leads: promote another node first"):
        remove(SIX, "leader", "leader", write_quorum=2)
    with pytest.raises(MembershipError, match="would leave 4 full followers, fewer than WRITE_QUORUM=5"):
        remove(SIX, "follower1", "leader", write_quorum=5)
    with pytest.raises(MembershipError, match="is not a member"):
        remove(SIX, "follower9", "leader", write_quorum=1)
    assert remove(SIX, "follower5", "leader", write_quorum=4).voters("leader") == tuple(f"follower{i}" for i in range(1, 5))


def test_a_learner_may_go_whatever_the_quorum():
    m = add(SIX, "follower6", "f6:8000")
    assert remove(m, "follower6", "leader", write_quorum=5) == SIX


def test_a_learner_is_promoted_once_its_lag_is_within_the_bound():
    assert learner_ready(match=900, last_seq=1000, max_lag=100)
    assert not learner_ready(match=899, last_seq=1000, max_lag=100)


def test_changes_go_one_at_a_time():
    assert change_allowed(None, committed=0) is None
    assert change_allowed(50, committed=50) is None
    assert "seq 51) is not committed yet" in change_allowed(51, committed=50)


def test_a_membership_round_trips_through_json_and_refuses_bad_shapes():
    m = add(SIX, "follower6", "f6:8000")
    assert Membership.from_json(m.to_json()) == m
    for bad in ([], [{"node_id": 1, "address": "x:1"}], [{"node_id": "a", "address": "x:1"}] * 2, "x"):
        with pytest.raises(MembershipError):
            Membership.from_json(bad)
