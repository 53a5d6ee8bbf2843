"""The term rules, as tables: fencing, promises, the promotion plan, rollback; and the safety
claim itself, checked on random histories: a promotion never loses an acknowledged write."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.core.terms import (
    Holding,
    PromiseRefused,
    StaleTerm,
    TermState,
    check_history,
    plan_promotion,
    promise_quorum,
    term_at,
    to_roll_back,
)

H = ((1, 1, "a"), (2, 5, "b"), (4, 9, "c"))


@pytest.mark.parametrize("seq, term", [(0, 0), (1, 1), (4, 1), (5, 2), (8, 2), (9, 4), (100, 4)])
def test_term_at_reads_the_history(seq, term):
    assert term_at(H, seq) == term


@pytest.mark.parametrize("raw, message", [
    ([[2, 1, "a"], [1, 5, "b"]], "must increase"),
    ([[1, 5, "a"], [2, 3, "b"]], "must increase"),
    ([[0, 1, "a"]], "integers >= 1"),
    ([[1, "x", "a"]], "integers >= 1"),
    ([[1, 1, 7]], "leader id is a string"),
    ([1], r"is \[term, first seq, leader id\]"),
])
def test_a_malformed_history_is_refused(raw, message):
    with pytest.raises(ValueError, match=message):
        check_history(raw)


def test_a_history_without_leader_ids_reads_as_unknown_leaders():
    assert check_history([[1, 1]]) == ((1, 1, None),)


@pytest.mark.parametrize("state, term, refused", [
    (TermState(3), 2, True),
    (TermState(3), 3, False),
    (TermState(3), 4, False),
    (TermState(0), 1, False),
])
def test_a_message_of_an_older_term_is_fenced(state, term, refused):
    if refused:
        with pytest.raises(StaleTerm):
            state.check(term)
    else:
        state.check(term)


@pytest.mark.parametrize("state, term, candidate, result", [
    (TermState(3, None, "a"), 4, "c", TermState(4, "c", None)),
    (TermState(4, "c", None), 4, "c", TermState(4, "c", None)),   # asked again: same promise
    (TermState(4, "c", None), 4, "d", PromiseRefused),              # one candidate per term
    (TermState(4, None, "b"), 4, "d", PromiseRefused),              # that term has a leader
    (TermState(5), 4, "d", PromiseRefused),                         # an older term
])
def test_a_node_promises_each_term_once(state, term, candidate, result):
    if result is PromiseRefused:
        with pytest.raises(PromiseRefused):
            state.promise(term, candidate)
    else:
        assert state.promise(term, candidate) == result


def test_following_a_later_term_forgets_the_promise_of_the_earlier_one():
    followed = TermState(4, "c", None).follow(5, "d", H)
    assert followed == TermState(5, None, "d", H)
    assert TermState(4, "c", None).follow(4, "c", H).voted_for == "c"


@pytest.mark.parametrize("followers, quorum, needed", [
    (5, 1, 5), (5, 2, 4), (5, 3, 3), (5, 4, 3), (5, 5, 3), (3, 1, 3), (1, 1, 1),
])
def test_promise_quorum_meets_every_write_quorum_and_is_a_majority(followers, quorum, needed):
    assert promise_quorum(followers, quorum) == needed
    assert needed + quorum > followers and 2 * needed > followers


def test_the_plan_keeps_the_newest_log_up_to_the_first_hole_and_restamps_beyond_it():
    candidate = Holding("c", H, 7, frozenset({10}))
    promisers = [Holding("d", H, 8), Holding("e", ((1, 1, "a"),), 12)]  # e holds stale term 1 entries at 9..12
    plan = plan_promotion(5, candidate, promisers)
    assert (plan.keep_through, plan.last, plan.holes) == (8, 10, (9,))
    assert dict(plan.fetch) == {8: "d"}
    assert list(plan.restamped) == [9, 10] and plan.term_start_seq == 11
    assert plan.history == ((1, 1, "a"), (2, 5, "b"), (5, 9, "c"))


def test_the_plan_without_holes_keeps_everything_and_starts_the_term_after_it():
    plan = plan_promotion(3, Holding("c", H[:2], 6), [Holding("d", H[:2], 8)])
    assert (plan.keep_through, plan.last, plan.holes, dict(plan.fetch)) == (8, 8, (), {7: "d", 8: "d"})
    assert plan.history == H[:2] + ((3, 9, "c"),)


def test_a_candidate_fetches_what_it_holds_only_as_a_stale_copy():
    old, new = ((1, 1, "a"),), ((1, 1, "a"), (2, 4, "b"))
    plan = plan_promotion(3, Holding("c", old, 6), [Holding("d", new, 5)])
    assert dict(plan.fetch) == {4: "d", 5: "d"} and plan.keep_through == 5 and plan.last == 5


@pytest.mark.parametrize("held, history, rolled", [
    ({1: 1, 2: 1, 3: 1}, ((1, 1, "a"),), []),
    ({1: 1, 2: 1, 3: 1}, ((1, 1, "a"), (2, 3, "b")), [3]),
    ({1: 1, 5: 1, 6: 2}, ((1, 1, "a"), (2, 5, "b")), [5]),
    ({2: 1, 9: 4}, H, []),
])
def test_roll_back_drops_what_the_leader_log_has_under_another_term(held, history, rolled):
    assert to_roll_back(held, history) == rolled


@st.composite
def failovers(draw):
    """A term-1 leader with n entries; each entry reached a random set of its five followers;
    the acknowledged ones reached at least W. Then a candidate and its promisers are chosen."""
    quorum = draw(st.integers(1, 5))
    n = draw(st.integers(1, 12))
    followers = ["f1", "f2", "f3", "f4", "f5"]
    reached = {seq: draw(st.sets(st.sampled_from(followers))) for seq in range(1, n + 1)}
    needed = promise_quorum(5, quorum)
    promisers = draw(st.lists(st.sampled_from(followers), min_size=needed, max_size=5, unique=True))
    return quorum, n, reached, promisers


def _holding(node, history, seqs):
    applied = 0
    while applied + 1 in seqs:
        applied += 1
    return Holding(node, history, applied, frozenset(s for s in seqs if s > applied))


@settings(max_examples=300, deadline=None)
@given(failovers())
def test_no_promotion_loses_an_acknowledged_write(failover):
    quorum, n, reached, promisers = failover
    history = ((1, 1, "leader"),)
    acknowledged = [seq for seq, nodes in reached.items() if len(nodes) >= quorum]
    holdings = {f: _holding(f, history, {s for s, nodes in reached.items() if f in nodes}) for f in promisers}
    candidate, others = promisers[0], promisers[1:]
    plan = plan_promotion(2, holdings[candidate], [holdings[f] for f in others])
    kept = set(range(1, plan.keep_through + 1))
    copied = {seq for seq in plan.restamped if seq not in plan.holes}
    for seq in acknowledged:  # kept at its place, or copied into the new term at the same seq
        assert seq in kept or seq in copied, (seq, plan)
    assert all(seq not in plan.holes for seq in acknowledged)
    # The new log is gap-free and its terms never decrease.
    terms = [term_at(plan.history, seq) for seq in range(1, plan.term_start_seq + 1)]
    assert terms == sorted(terms) and terms[-1] == 2
