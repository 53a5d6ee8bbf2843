"""Automatic failover's decisions as tables, with an injected clock: the lease, the healthiest
check, and the one action per cycle."""

from __future__ import annotations

import pytest

from node.core.coordination import Action, LeaderLease, Position, View, contact_quorum, decide, healthiest, in_touch


@pytest.mark.parametrize("now, acknowledging, renew_due, remaining", [
    (10.0, True, False, 2.5),
    (10.99, True, False, 1.51),
    (11.01, True, True, 1.49),
    (12.49, True, True, 0.01),
    (12.5, False, True, 0.0),     # the margin before the TTL: it stops first
    (13.5, False, True, 0.0),
])
def test_the_lease_counts_from_when_the_renewal_was_sent(now, acknowledging, renew_due, remaining):
    lease = LeaderLease(ttl_s=3.0, margin_s=0.5)
    lease.renewed(sent_at=10.0, ttl_s=3.0)
    assert lease.acknowledging(now) is acknowledging
    assert lease.renew_due(now) is renew_due
    assert lease.remaining(now) == pytest.approx(remaining)


def test_no_lease_means_no_acknowledging_and_a_renewal_due_at_once():
    lease = LeaderLease(ttl_s=3.0, margin_s=0.5)
    assert not lease.acknowledging(0.0) and lease.renew_due(0.0) and lease.next_renewal() is None
    lease.renewed(sent_at=1.0, ttl_s=2.0)  # etcd may answer with less than asked
    assert lease.acknowledging(2.4) and not lease.acknowledging(2.5) and lease.next_renewal() == 2.0
    lease.lost()
    assert not lease.acknowledging(1.5)


def test_a_margin_as_large_as_the_ttl_is_refused():
    with pytest.raises(ValueError, match="margin"):
        LeaderLease(ttl_s=1.0, margin_s=1.0)


ME = Position("follower3", last_term=2, last_seq=50)


@pytest.mark.parametrize("answers, needed, race, reason", [
    ([Position("follower1", 2, 49), Position("follower5", 2, 50)], 3, True, "no follower is ahead of follower3"),
    ([Position("follower1", 2, 51)], 2, False, "follower1 is ahead"),
    ([Position("follower1", 3, 1)], 2, False, "follower1 is ahead"),            # a later term beats more entries
    ([Position("follower1", 1, 90)], 2, True, "no follower is ahead"),          # more entries of an older term do not
    ([Position("follower1", 2, 50, priority=1)], 2, False, "follower1 is ahead"),  # tie: priority
    ([Position("follower1", 2, 50)], 2, False, "follower1 is ahead"),           # tie: the smaller id
    ([Position("follower4", 2, 50)], 2, True, "no follower is ahead"),
    ([Position("follower1", 2, 10)], 3, False, "only 2 of the 3 followers needed answered"),
    ([Position("follower1", 2, 99, can_race=False)], 2, True, "no follower is ahead"),  # cannot reach etcd
])
def test_a_follower_races_only_when_enough_answered_and_none_is_ahead(answers, needed, race, reason):
    verdict = healthiest(ME, answers, needed)
    assert verdict.race is race and reason in verdict.reason


def test_a_node_that_never_followed_a_leader_does_not_race():
    """At a new cluster's start the key is free until the first leader takes it: the followers,
    all empty, must not race it."""
    verdict = healthiest(Position("follower1", 0, 0), [Position("follower2", 0, 0)], 2)
    assert not verdict.race and "ROLE=leader" in verdict.reason


def view(**changes):
    base = dict(node_id="n1", leading=False, holder=None, etcd_reachable=True, lease_valid=False,
                lease_held=True, automatic=True, paused=False)
    return View(**{**base, **changes})


@pytest.mark.parametrize("changes, action, words", [
    (dict(leading=True, holder="n1", lease_valid=True), Action.RENEW, "leader with the lock"),
    (dict(leading=True, holder="n1", lease_valid=True, followers_in_touch=2, contact_needed=2), Action.RENEW,
     "leader with the lock"),
    (dict(leading=True, holder="n1", lease_valid=True, followers_in_touch=1, contact_needed=2), Action.STEP_DOWN,
     "cut off from the followers (1 answered lately, 2 needed)"),
    (dict(leading=True, holder="n1", lease_valid=True, followers_in_touch=0, contact_needed=2, automatic=False),
     Action.RENEW, "leader with the lock"),
    (dict(leading=True, holder="n1", lease_valid=True, followers_in_touch=0, contact_needed=2, paused=True),
     Action.RENEW, "leader with the lock"),
    (dict(leading=True, holder="n1", lease_valid=False), Action.STEP_DOWN, "could not be renewed"),
    (dict(leading=True, holder="n2", lease_valid=True), Action.STEP_DOWN, "names n2"),
    (dict(leading=True, holder=None, lease_valid=False), Action.ACQUIRE, "taking the free leader key"),
    (dict(leading=True, holder="n1", lease_held=False), Action.ACQUIRE, "from before a restart"),
    (dict(leading=True, holder="n1", lease_held=False, etcd_reachable=False), Action.STEP_DOWN, "demoting"),
    (dict(leading=True, etcd_reachable=False, lease_valid=True), Action.RENEW, "until the lease runs out"),
    (dict(leading=True, etcd_reachable=False, lease_valid=False), Action.STEP_DOWN, "lease ran out"),
    (dict(holder="n2"), Action.FOLLOW, "following n2"),
    (dict(holder="n1"), Action.WAIT, "earlier run"),
    (dict(), Action.CHECK_HEALTH, "healthiest"),
    (dict(automatic=False), Action.WAIT, "FAILOVER=manual"),
    (dict(paused=True), Action.WAIT, "paused"),
    (dict(etcd_reachable=False), Action.WAIT, "no failover"),
])
def test_one_decision_per_cycle(changes, action, words):
    decision = decide(view(**changes))
    assert decision.action is action and words in decision.sentence


@pytest.mark.parametrize("write_quorum, needed", [(1, 1), (2, 2), (3, 3), (4, 3), (5, 3)])
def test_a_leader_keeps_the_key_while_it_hears_from_w_followers_or_a_majority(write_quorum, needed):
    assert contact_quorum(5, write_quorum) == needed


def test_followers_in_touch_count_only_answers_within_the_window():
    heard = {"f1": 10.0, "f2": 7.0, "f3": 4.9}
    assert in_touch(heard, now=10.0, window_s=3.0) == 2  # 4.9 is 5.1 s old
    assert in_touch(heard, now=20.0, window_s=3.0) == 0
    assert in_touch({}, now=0.0, window_s=3.0) == 0
