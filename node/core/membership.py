"""Who is in the cluster: the rules of membership changes, with no I/O (DDIA 5.1, "setting up
new followers"; etcd's raft adds a node as a learner first and promotes it once caught up).

A membership is every node with its address, the leader included; a *learner* receives every
entry but confirms nothing towards ``WRITE_QUORUM`` and is never promoted, until it is close
enough to the leader to take part without slowing writes down. Changes come one at a time: a
change is refused while the previous one is not committed, so two configurations never
overlap by more than one node.

    m = Membership.of([("leader", "leader:8000"), ("follower1", "follower1:8000")])
    m = add(m, "follower6", "follower6:8000")        # a learner
    learner_ready(match=990, last_seq=1000, max_lag=100)   # True: promote it
    m = promote_learner(m, "follower6")
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any


class MembershipError(ValueError):
    """A change that cannot be made; the message says why and what would be allowed."""


@dataclass(frozen=True)
class Member:
    node_id: str
    address: str
    learner: bool = False

    def to_json(self) -> dict:
        return {"node_id": self.node_id, "address": self.address, "learner": self.learner}


@dataclass(frozen=True)
class Membership:
    members: tuple[Member, ...]

    @classmethod
    def of(cls, peers: Iterable[tuple[str, str]]) -> Membership:
        """The membership of a cluster started from ``PEERS``: every node a full member."""
        return cls(tuple(Member(node_id, address) for node_id, address in peers))

    @classmethod
    def from_json(cls, data: Any) -> Membership:
        if not isinstance(data, list) or not data:
            raise MembershipError("a membership is a non-empty list of {node_id, address, learner}")
        members = []
        for item in data:
            if not isinstance(item, dict) or not isinstance(item.get("node_id"), str) \
                    or not isinstance(item.get("address"), str) or not isinstance(item.get("learner", False), bool):
                raise MembershipError(f"a member is {{node_id: string, address: string, learner: bool}}, got {item!r}")
            members.append(Member(item["node_id"], item["address"], item.get("learner", False)))
        membership = cls(tuple(members))
        _check_unique(membership)
        return membership

    def to_json(self) -> list[dict]:
        return [m.to_json() for m in self.members]

    @property
    def peers(self) -> tuple[tuple[str, str], ...]:
        """(node id, address) of every member, learners included: everyone gets every entry."""
        return tuple((m.node_id, m.address) for m in self.members)

    def get(self, node_id: str) -> Member | None:
        return next((m for m in self.members if m.node_id == node_id), None)

    def voters(self, leader_id: str | None) -> tuple[str, ...]:
        """The followers whose confirmations count towards W and whose promises a promotion
        needs: every full member but the leader."""
        return tuple(m.node_id for m in self.members if not m.learner and m.node_id != leader_id)

    def learners(self) -> tuple[str, ...]:
        return tuple(m.node_id for m in self.members if m.learner)


def add(membership: Membership, node_id: str, address: str) -> Membership:
    """``node_id`` at ``address`` joins as a learner."""
    if not node_id or not isinstance(node_id, str):
        raise MembershipError("a new member needs a non-empty node_id")
    if membership.get(node_id) is not None:
        raise MembershipError(f"{node_id} is a member already (at {membership.get(node_id).address}); "
                              f"remove it first to give it another address")
    taken = next((m for m in membership.members if m.address == address), None)
    if taken is not None:
        raise MembershipError(f"address {address} is {taken.node_id}'s; each member needs its own")
    return Membership(membership.members + (Member(node_id, address, learner=True),))


def remove(membership: Membership, node_id: str, leader_id: str | None, write_quorum: int) -> Membership:
    """``node_id`` leaves; refused for the leader itself and when fewer full followers than
    ``write_quorum`` would remain (no write could be acknowledged any more)."""
    member = membership.get(node_id)
    if member is None:
        raise MembershipError(f"{node_id} is not a member (members: {', '.join(m.node_id for m in membership.members)})")
    if node_id == leader_id:
        raise MembershipError(f"{node_id} leads: promote another node first (make promote NODE=...), then remove it")
    left = Membership(tuple(m for m in membership.members if m.node_id != node_id))
    if not member.learner and len(left.voters(leader_id)) < write_quorum:
        raise MembershipError(f"removing {node_id} would leave {len(left.voters(leader_id))} full followers, fewer "
                              f"than WRITE_QUORUM={write_quorum}: lower WRITE_QUORUM or add a follower first")
    return left


def promote_learner(membership: Membership, node_id: str) -> Membership:
    """The learner ``node_id`` becomes a full follower."""
    member = membership.get(node_id)
    if member is None or not member.learner:
        raise MembershipError(f"{node_id} is not a learner")
    return Membership(tuple(replace(m, learner=False) if m.node_id == node_id else m for m in membership.members))


def learner_ready(match: int, last_seq: int, max_lag: int) -> bool:
    """A learner that holds every entry up to within ``max_lag`` of the leader's last one is
    close enough to count: a write waiting for it waits for little more than its own send."""
    return last_seq - match <= max_lag


def change_allowed(pending_seq: int | None, committed: int) -> str | None:
    """None if a new change may start; else why not (the previous one, logged at
    ``pending_seq``, is not committed yet: changes go one at a time)."""
    if pending_seq is not None and pending_seq > committed:
        return (f"the previous membership change (seq {pending_seq}) is not committed yet (committed: {committed}); "
                f"one change at a time: try again once it is")
    return None


def _check_unique(membership: Membership) -> None:
    for field in ("node_id", "address"):
        values = [getattr(m, field) for m in membership.members]
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise MembershipError(f"the membership lists the {field} {twice[0]!r} twice")
