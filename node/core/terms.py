"""Terms: which leadership an entry belongs to, who may lead, and what a new leader keeps.

A *term* numbers one leadership. The leader of term ``t`` is the only node that assigns
sequence numbers in ``t``, so ``(term, seq)`` names one entry cluster-wide. Every leader's log
is gap-free and its terms never decrease along the log, so a short *history*, the list of
``(term, first seq of that term)``, says which term every seq of that log has. A node that
follows a leader keeps that leader's history (which also names each term's leader); an entry it holds is part of the leader's log
exactly when its term is the one the history gives for its seq (:func:`consistent`).

The rules, all pure:

- :class:`TermState`: the highest term a node knows, whom it promised that term, the leader
  it follows, and the history; :meth:`TermState.check` fences messages of older terms.
- :func:`promise_quorum`: how many promises a candidate needs: ``N - W + 1`` of the ``N``
  followers meet every set of ``W`` followers that confirmed a write, so together they hold
  every acknowledged write (lossless semi-sync failover); and more than half of them, so two
  candidates of one term cannot both win.
- :func:`plan_promotion`: from the promisers' histories and held seqs, the new leader's log:
  everything consistent with the newest history up to the first seq nobody holds; what lies
  beyond is fetched and written again in the new term (an acknowledged write can sit beyond
  a seq no promiser holds, since writes are confirmed one by one), holes become no-ops, and a
  term-start entry follows.
- :func:`to_roll_back`: the entries a node holds that its leader's log does not have.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

# ((term, first seq of that term, leader id), ...), terms increasing, seqs not decreasing. The
# leader is None only for the term 1 of a log written before terms were recorded.
History = tuple[tuple[int, int, "str | None"], ...]


class StaleTerm(Exception):
    """A message from an older term: refused, nothing changes."""

    def __init__(self, seen: int, current: int, leader_id: str | None):
        self.seen, self.current, self.leader_id = seen, current, leader_id
        super().__init__(f"term {seen} is older than this node's term {current}"
                         + (f" (leader {leader_id})" if leader_id else " (no leader elected yet)"))


class PromiseRefused(Exception):
    """A node cannot promise this term to this candidate."""


def term_at(history: History, seq: int) -> int:
    """The term of ``seq`` in a log with this history (0 before the first term)."""
    i = bisect_right(history, seq, key=lambda item: item[1]) - 1
    return history[i][0] if i >= 0 else 0


def consistent(history: History, seq: int, term: int) -> bool:
    """Whether the entry (term, seq) is the one a log with ``history`` holds at ``seq``."""
    return term_at(history, seq) == term


def check_history(history: Iterable) -> History:
    """A history from untrusted JSON: ``[term, first seq, leader id]`` items, terms increasing,
    seqs not decreasing. Raises ValueError saying what is wrong."""
    items = []
    for item in history:
        if not isinstance(item, (list, tuple)) or len(item) not in (2, 3):
            raise ValueError(f"a history item is [term, first seq, leader id], got {item!r}")
        term, seq, leader = (*item, None) if len(item) == 2 else item
        if type(term) is not int or type(seq) is not int or term < 1 or seq < 1:
            raise ValueError(f"history terms and seqs are integers >= 1, got {item!r}")
        if leader is not None and not isinstance(leader, str):
            raise ValueError(f"a history leader id is a string, got {leader!r}")
        items.append((term, seq, leader))
    for (t0, s0, _), (t1, s1, _) in zip(items, items[1:]):
        if not (t1 > t0 and s1 >= s0):
            raise ValueError(f"history must increase in term and seq, got {items}")
    return tuple(items)


def last_leader(history: History) -> str | None:
    """The leader of the newest term in ``history``."""
    return history[-1][2] if history else None


@dataclass(frozen=True)
class TermState:
    """What a node must remember across restarts (``node.terms`` keeps it on disk).

    ``term``: the highest term seen or promised. ``voted_for``: the candidate promised ``term``
    (None: not promised yet). ``leader_id``: the leader of ``term`` once known. ``history``:
    of the log this node holds (its leader's, or its own when it leads).
    """

    term: int = 0
    voted_for: str | None = None
    leader_id: str | None = None
    history: History = ()

    def check(self, term: int) -> None:
        """Fencing: raise StaleTerm for a message of an older term."""
        if term < self.term:
            raise StaleTerm(term, self.term, self.leader_id)

    def follow(self, term: int, leader_id: str, history: History) -> TermState:
        """The state after hearing from the leader of ``term`` (not older than ours)."""
        self.check(term)
        voted = self.voted_for if term == self.term else None
        return TermState(term, voted, leader_id, history)

    def promise(self, term: int, candidate: str) -> TermState:
        """The state after promising ``term`` to ``candidate``; PromiseRefused if this node knows
        that term or a later one, unless it already promised it to this very candidate."""
        if term == self.term and self.voted_for == candidate:
            return self
        if term <= self.term:
            raise PromiseRefused(f"this node is at term {self.term}"
                                 + (f", promised to {self.voted_for}" if self.voted_for else "")
                                 + f"; a promotion must ask for a term above {self.term}")
        return TermState(term, candidate, None, self.history)

    def lead(self, history: History) -> TermState:
        """The state of the leader of the last term of ``history`` (a promoted candidate)."""
        term, _, leader_id = history[-1]
        return TermState(term, leader_id, leader_id, history)

    @property
    def last_term(self) -> int:
        return self.history[-1][0] if self.history else 0


def promise_quorum(followers: int, write_quorum: int) -> int:
    """Promises a candidate needs out of the ``followers`` of the configuration in force."""
    return max(followers - write_quorum + 1, followers // 2 + 1)


@dataclass(frozen=True)
class Holding:
    """What one promiser holds: its history and the seqs of its entries (all consistent with
    that history: a node rolls back what is not before it follows a new history)."""

    node_id: str
    history: History
    applied: int  # holds every seq 1..applied
    beyond: frozenset[int] = frozenset()  # and these, after a gap

    def holds(self, seq: int) -> bool:
        return seq <= self.applied or seq in self.beyond

    @property
    def last(self) -> int:
        return max(self.beyond, default=self.applied) if self.beyond else self.applied


@dataclass(frozen=True)
class PromotionPlan:
    """How the candidate builds its log as leader of ``term``.

    Seqs ``1..keep_through`` are taken as they are (``history`` up to there is the newest
    history known); for each seq in ``fetch``, the entry held by ``fetch[seq]`` is taken;
    seqs ``keep_through+1..last`` are written again in the new term (copies of what a promiser
    held, no-ops where nobody did); the term-start entry takes ``last + 1``.
    """

    term: int
    keep_through: int
    last: int
    fetch: Mapping[int, str] = field(default_factory=dict)
    holes: tuple[int, ...] = ()
    history: History = ()

    @property
    def term_start_seq(self) -> int:
        return self.last + 1

    @property
    def restamped(self) -> range:
        return range(self.keep_through + 1, self.last + 1)


def plan_promotion(term: int, candidate: Holding, promisers: list[Holding]) -> PromotionPlan:
    """The new leader's log from what the candidate and its promisers hold.

    The newest history (highest last term) is the log of the latest leader; what a node holds
    consistently with it is part of that log. Every acknowledged write is held by some promiser,
    consistently, so it is kept: below the first seq nobody holds, at its place; beyond it,
    copied into the new term at the same seq.
    """
    everyone = [candidate] + promisers
    newest = max(everyone, key=lambda h: (h.history[-1][0] if h.history else 0)).history
    last = max((h.last for h in everyone), default=0)
    while last and _holder(last, everyone, newest) is None:  # held only by stale copies
        last -= 1
    fetch: dict[int, str] = {}
    holes: list[int] = []
    gap = None
    for seq in range(1, last + 1):
        by = _holder(seq, everyone, newest)
        if by is None:
            holes.append(seq)
            gap = gap or seq
        elif by != candidate.node_id:
            fetch[seq] = by
    keep_through = (gap - 1) if gap else last
    history = tuple(item for item in newest if item[1] <= keep_through) + ((term, keep_through + 1, candidate.node_id),)
    return PromotionPlan(term, keep_through, last, fetch, tuple(holes), history)


def _holder(seq: int, everyone: list[Holding], newest: History) -> str | None:
    """Who holds ``seq`` as the newest log has it (the candidate first, then the promisers in
    order), or None. A holder whose history gives ``seq`` another term holds another entry."""
    want = term_at(newest, seq)
    for holding in everyone:
        if holding.holds(seq) and term_at(holding.history, seq) == want:
            return holding.node_id
    return None


def to_roll_back(held: Mapping[int, int], history: History) -> list[int]:
    """Seqs of the entries (seq -> term) that are not in the log of a leader with ``history``:
    those whose term is not the one the history gives for their seq. (A leader's entries past
    its last seq cannot be held: it sends only what it has.)"""
    return sorted(seq for seq, term in held.items() if term_at(history, seq) != term)


def restamp(entry, term: int):
    """A copy of ``entry`` assigned again in ``term`` (same seq, op, key, value)."""
    return replace(entry, term=term)
