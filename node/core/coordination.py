"""Automatic failover's decisions, Patroni's way: one decision per cycle, etcd's leader key as
the only lock, the node's data deciding who *should* lead. No clock, no I/O: every input is
an argument, every answer a decision with the sentence that explains it.

- :class:`LeaderLease`: how long the leader may go on acknowledging writes. The lease is
  counted from when the grant or keepalive was *sent*, so the leader's own deadline always
  falls before etcd's (which counts from when it received the request); a margin covers
  clock drift and a slow step-down. Past the deadline the leader stops acknowledging, before
  anyone else can take the key.
- :func:`healthiest`: a follower races for the key only if enough followers answered to
  cover every write quorum (``N - W + 1``, the promotion rule) and none of them that could
  take the key is ahead of it: a later last term, then more entries, then a higher priority,
  then a smaller node id.
- :func:`contact_quorum`: a leader that reaches etcd but hears from too few followers hands
  the key on (etcd's CheckQuorum), so a leader cut off from its followers does not keep the
  lock and the cluster without writes.
- :func:`decide`: given what this node is and what etcd says, the one thing to do now.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class LeaderLease:
    """The leader's right to acknowledge writes, as its own clock sees it.

        lease = LeaderLease(ttl_s=3.0, margin_s=0.5)
        lease.renewed(sent_at=10.0, ttl_s=3.0)
        lease.acknowledging(now=12.4)   # True: until 10.0 + 3.0 - 0.5
        lease.renew_due(now=11.0)       # True: every third of the TTL
    """

    def __init__(self, ttl_s: float, margin_s: float) -> None:
        if not 0 <= margin_s < ttl_s:
            raise ValueError(f"the margin ({margin_s} s) must be below the TTL ({ttl_s} s)")
        self.ttl_s, self.margin_s = ttl_s, margin_s
        self.valid_until: float | None = None  # None: no lease held
        self.last_sent: float | None = None

    def renewed(self, sent_at: float, ttl_s: float) -> None:
        """A grant or keepalive sent at ``sent_at`` came back with ``ttl_s`` seconds left."""
        self.valid_until = sent_at + ttl_s
        self.last_sent = sent_at

    def lost(self) -> None:
        self.valid_until = self.last_sent = None

    def acknowledging(self, now: float) -> bool:
        return self.valid_until is not None and now < self.valid_until - self.margin_s

    def renew_due(self, now: float) -> bool:
        return self.last_sent is None or now >= self.last_sent + self.ttl_s / 3

    def next_renewal(self) -> float | None:
        return None if self.last_sent is None else self.last_sent + self.ttl_s / 3

    def remaining(self, now: float) -> float:
        """Seconds left to acknowledge writes (0 when none)."""
        return 0.0 if self.valid_until is None else max(0.0, self.valid_until - self.margin_s - now)


def contact_quorum(followers: int, write_quorum: int) -> int:
    """How many followers a leader must hear from to keep the key: W, but never more than a
    majority, so a leader with a follower or two down (W = 5) does not flap, while one cut
    off from its followers (it hears none) hands the key on."""
    return min(write_quorum, followers // 2 + 1)


def in_touch(last_heard: dict[str, float], now: float, window_s: float) -> int:
    """Followers heard from (a push answered, a /health probe answered) within ``window_s``."""
    return sum(1 for at in last_heard.values() if now - at <= window_s)


@dataclass(frozen=True)
class Position:
    """How far one node's log goes: what the healthiest check compares."""

    node_id: str
    last_term: int
    last_seq: int
    priority: int = 0
    can_race: bool = True  # False: it cannot reach etcd, so it cannot take the key


def _rank(p: Position) -> tuple:
    """Larger is healthier; a smaller node id wins the last tie (hence the negated code points)."""
    return (p.last_term, p.last_seq, p.priority, [-ord(c) for c in p.node_id])


@dataclass(frozen=True)
class Verdict:
    race: bool
    reason: str


def healthiest(me: Position, answers: list[Position], needed: int) -> Verdict:
    """Whether ``me`` may race for the leader key, given the positions of the followers that
    answered (``needed``: answers required, this node included)."""
    if me.last_term == 0:
        return Verdict(False, f"{me.node_id} has never followed a leader: a new cluster's first leader is the node "
                              f"started with ROLE=leader")
    if len(answers) + 1 < needed:
        return Verdict(False, f"only {len(answers) + 1} of the {needed} followers needed answered (itself "
                              f"included): a new leader could miss an acknowledged write, so nobody races")
    # A node that cannot reach etcd cannot take the key: deferring to it would leave the cluster
    # without a leader. Its entries are not lost: the promotion fetches what promisers hold.
    ahead = sorted((a for a in answers if a.can_race and _rank(a) > _rank(me)), key=_rank, reverse=True)
    if ahead:
        best = ahead[0]
        return Verdict(False, f"{best.node_id} is ahead (term {best.last_term}, seq {best.last_seq}, priority "
                              f"{best.priority} against {me.last_term}, {me.last_seq}, {me.priority}): it races")
    return Verdict(True, f"no follower is ahead of {me.node_id} (term {me.last_term}, seq {me.last_seq})")


class Action(Enum):
    RENEW = "renew"  # keep the lease alive
    ACQUIRE = "acquire"  # a leader without the key takes it (a new cluster's first leader)
    STEP_DOWN = "step down"  # stop acknowledging, follow
    FOLLOW = "follow"  # the key names a leader: follow it
    CHECK_HEALTH = "check health"  # the key is free: ask the followers, race if healthiest
    WAIT = "wait"  # nothing to do (failover off or paused)


@dataclass(frozen=True)
class View:
    """One cycle's inputs: this node and what etcd said."""

    node_id: str
    leading: bool  # this node's role is leader
    holder: str | None  # node id in the leader key; None when the key is absent
    etcd_reachable: bool
    lease_valid: bool  # LeaderLease.acknowledging(now)
    lease_held: bool  # this process holds an etcd lease (False after a restart, until it takes the key)
    automatic: bool  # FAILOVER=auto
    paused: bool  # the cluster-wide pause (POST /admin/pause)
    followers_in_touch: int = 0  # leading: followers heard from within the contact window ...
    contact_needed: int = 0  # ... and how many it must hear from (contact_quorum) to keep the key


@dataclass(frozen=True)
class Decision:
    action: Action
    sentence: str


def decide(view: View) -> Decision:
    """The one thing to do this cycle, and why (the sentence goes to the log and /status)."""
    me = view.node_id
    if view.leading:
        if view.holder == me and not view.lease_held and view.etcd_reachable:
            return Decision(Action.ACQUIRE, "the leader key names this node from before a restart: taking it back "
                                            "with a new lease")
        if not view.lease_valid and view.holder == me:
            return Decision(Action.STEP_DOWN, "demoting: the leader lease could not be renewed in time")
        if not view.etcd_reachable:
            if view.lease_valid:
                return Decision(Action.RENEW, "etcd unreachable: acknowledging until the lease runs out")
            return Decision(Action.STEP_DOWN, "demoting: etcd unreachable and the lease ran out")
        # Only where another node may then take over: with failover off or paused, a leader
        # that steps down stays down after the partition heals.
        if view.holder == me and view.followers_in_touch < view.contact_needed and view.automatic and not view.paused:
            return Decision(Action.STEP_DOWN, f"demoting: cut off from the followers ({view.followers_in_touch} "
                                              f"answered lately, {view.contact_needed} needed): a follower that "
                                              f"reaches them may lead")
        if view.holder == me:
            return Decision(Action.RENEW, "no action: I am the leader with the lock")
        if view.holder is None:
            return Decision(Action.ACQUIRE, "leading without the lock: taking the free leader key")
        return Decision(Action.STEP_DOWN, f"demoting: the leader key names {view.holder}")
    if not view.etcd_reachable:
        return Decision(Action.WAIT, "etcd unreachable: following whoever leads, no failover")
    if view.holder is not None:
        if view.holder == me:
            return Decision(Action.WAIT, "the leader key names this node from an earlier run: waiting for it to expire")
        return Decision(Action.FOLLOW, f"following {view.holder}, the holder of the leader key")
    if not view.automatic:
        return Decision(Action.WAIT, "no leader key and FAILOVER=manual: promote a node by hand")
    if view.paused:
        return Decision(Action.WAIT, "no leader key, but failover is paused (POST /admin/resume ends the pause)")
    return Decision(Action.CHECK_HEALTH, "no leader key: checking whether this node is the healthiest")
