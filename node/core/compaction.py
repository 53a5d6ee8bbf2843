"""When to snapshot and what the leader must keep after one: the rules of log compaction, with
no I/O (DDIA 5.1, "setting up new followers"; etcd's raft does the same with its snapshot
index and each follower's match index).

- :func:`snapshot_due`: every ``every`` applied entries since the last snapshot.
- :func:`first_to_keep`: a snapshot at seq S lets the entries up to S go, but a live follower
  that still lacks some of them would then need a whole snapshot for a short outage; so the
  leader keeps from the slowest live follower's next entry, bounded by ``max_retained`` entries
  (a follower further behind gets the snapshot: Redis's full resync).
- :func:`needs_snapshot`: a follower whose next entry is no longer kept.
"""

from __future__ import annotations


def snapshot_due(applied_seq: int, last_snapshot_seq: int, every: int) -> bool:
    """``every`` <= 0 turns automatic snapshots off."""
    return every > 0 and applied_seq - last_snapshot_seq >= every


def first_to_keep(snapshot_seq: int, matches: dict[str, int], live: set[str], last_seq: int,
                  max_retained: int) -> int:
    """The first seq the leader keeps after a snapshot at ``snapshot_seq``: what the slowest
    live follower lacks (``matches``: each follower's highest seq held), never more than
    ``max_retained`` entries before ``last_seq``, and never past ``snapshot_seq + 1`` (what no
    snapshot holds yet must stay)."""
    wanted = min((matches[f] + 1 for f in live if f in matches), default=snapshot_seq + 1)
    bound = max(1, last_seq - max_retained + 1)
    return min(snapshot_seq + 1, max(wanted, bound))


def needs_snapshot(follower_next: int, first_kept: int) -> bool:
    """The entries a follower needs next were compacted away: it must install a snapshot."""
    return follower_next < first_kept
