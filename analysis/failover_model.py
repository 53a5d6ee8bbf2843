"""The failover study's computations, apart from any cluster: how long writes went unanswered
around the kill, what happened to every write, and for which W a failover can happen at all.

Everything here takes plain records (the study's write rows, the new leader's log, the
rolled-back entries) and returns numbers or rows, so the same functions serve the study and
its tests. Times are seconds relative to the leader's SIGKILL (negative: before it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from node.core.coordination import Position, healthiest
from node.core.terms import promise_quorum

ACKNOWLEDGED, REFUSED, UNKNOWN = "acknowledged", "refused", "unknown"
# node.client's verdicts, in the study's words: "fail" proves the write was not applied.
OUTCOMES = {"ok": ACKNOWLEDGED, "fail": REFUSED, "unknown": UNKNOWN}


# --- unavailability ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Gap:
    start_s: float  # the last acknowledgment before the gap
    end_s: float  # the next one, or the end of the writes when none came (``censored``)
    censored: bool = False

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s


def longest_gap(ack_ends: Iterable[float], kill_s: float, writes_end_s: float, writes_start_s: float) -> Gap:
    """The longest stretch without an acknowledged write, from the last acknowledgment at or
    before the kill to the end of the writes.

    Counting from the last acknowledgment before the kill (not from the kill) is what a client
    sees: the writes in flight when the leader died never come back acknowledged. Later gaps
    count too, since at W = 5 a new leader can be elected and still acknowledge nothing until
    the old leader rejoins. With no acknowledgment after the kill the gap runs to the end of
    the writes and is marked ``censored`` (a lower bound)."""
    ends = sorted(ack_ends)
    before = [t for t in ends if t <= kill_s]
    anchor = before[-1] if before else writes_start_s
    after = [t for t in ends if t > anchor]
    points = [anchor, *after]
    best = Gap(anchor, anchor)
    for a, b in zip(points, points[1:]):
        if b - a > best.length_s:
            best = Gap(a, b)
    if writes_end_s - points[-1] > best.length_s:
        best = Gap(points[-1], writes_end_s, censored=True)
    return best


def first_at_or_after(times: Iterable[float], since: float) -> float:
    """The first of ``times`` not before ``since``; NaN when there is none."""
    later = [t for t in times if t >= since]
    return min(later) if later else math.nan


# --- the history check ------------------------------------------------------------------------


@dataclass(frozen=True)
class Fate:
    """What became of the writes of one run, once the cluster converged."""

    lost: list[str]  # acknowledged, yet not at their seq in the new leader's log
    refused_applied: list[str]  # refused (proved not applied), yet in the log
    unknown_applied: int  # unknown outcome, found in the log: it was applied after all
    rolled_back: list[str]  # rolled back on some node and not in the final log
    rolled_back_acknowledged: list[str]  # of those, acknowledged ones: must be none
    rolled_back_kept: int  # rolled back from some node's log, yet in the final log (a copy in the new term)
    in_log: set[str]  # values of this run's writes present in the final log


def write_fates(writes: list[dict], log: Mapping[int, object], rolled_back: Iterable[object]) -> Fate:
    """Classify every write (rows with ``outcome``, ``key``, ``value``, ``seq``) against the new
    leader's log (seq -> entry with ``key``, ``value``) and the entries found in rollback files.

    Values are unique per write, so a value names its write. An acknowledged write must sit at
    the seq it was acknowledged with, whatever term the entry carries there now (a promotion
    may write it again in the new term at the same seq)."""
    in_log = {e.value for e in log.values() if getattr(e, "op", "set") == "set" and isinstance(e.value, str)}
    lost = [w["value"] for w in writes if w["outcome"] == ACKNOWLEDGED and not _at_seq(log, w)]
    refused_applied = [w["value"] for w in writes if w["outcome"] == REFUSED and w["value"] in in_log]
    unknown_applied = sum(w["outcome"] == UNKNOWN and w["value"] in in_log for w in writes)
    ours = {w["value"]: w for w in writes}
    rolled = {e.value for e in rolled_back if isinstance(e.value, str) and e.value in ours}
    dropped = sorted(rolled - in_log)
    return Fate(lost, refused_applied, unknown_applied, dropped,
                [v for v in dropped if ours[v]["outcome"] == ACKNOWLEDGED], len(rolled & in_log), in_log)


def _at_seq(log: Mapping[int, object], write: dict) -> bool:
    entry = log.get(write["seq"])
    return entry is not None and entry.key == write["key"] and entry.value == write["value"]


def replay(log: Mapping[int, object]) -> dict:
    """The key-value state a log leads to, applied in seq order: what every replica must hold."""
    state: dict = {}
    for seq in sorted(log):
        entry = log[seq]
        if entry.op == "set":
            state[entry.key] = entry.value
        elif entry.op == "delete":
            state.pop(entry.key, None)
        elif entry.op == "clear":
            state.clear()
    return state


# --- when failover is possible ----------------------------------------------------------------


def failover_table(followers: int = 5) -> list[dict]:
    """For every W and every number of followers down besides the dead leader: whether a
    follower races (``healthiest``, with the answers it would get) and whether the new leader
    can then acknowledge writes, without and with the old leader back as a follower.

    The inputs are those of a real failover: the electorate is the configuration's nodes but
    the deposed leader (``followers`` of them), the candidate is the most advanced survivor,
    and ``promise_quorum`` gives the answers needed, as the coordinator and the promotion ask."""
    rows = []
    for w in range(1, followers + 1):
        needed = promise_quorum(followers, w)
        for down in range(followers):
            alive = followers - down  # the candidate included
            me = Position("candidate", last_term=1, last_seq=alive + 1)
            answers = [Position(f"survivor{i}", last_term=1, last_seq=1) for i in range(1, alive)]
            verdict = healthiest(me, answers, needed)
            rows.append({"W": w, "followers_down": down, "answering": alive, "needed": needed,
                         "elected": verdict.race, "acknowledges": verdict.race and alive - 1 >= w,
                         "acknowledges_once_old_leader_back": verdict.race and alive >= w,
                         "reason": verdict.reason})
    return rows


def most_followers_down(table: list[dict], column: str = "elected") -> dict[int, int]:
    """Per W: the most followers that may be down with ``column`` still true (-1: never)."""
    best: dict[int, int] = {}
    for row in table:
        best.setdefault(row["W"], -1)
        if row[column]:
            best[row["W"]] = max(best[row["W"]], row["followers_down"])
    return best


# --- one run's row ----------------------------------------------------------------------------


def first_event(events: list[dict], since: float, matches: Callable[[dict], bool]) -> float:
    """Time of the first event at or after ``since`` that ``matches`` (NaN: none)."""
    times = [e["t_s"] for e in events if e["t_s"] >= since and matches(e)]
    return min(times) if times else math.nan


def timings(events: list[dict], writes: list[dict], old_leader: str, old_term: int = 1) -> dict:
    """The failover's milestones, in seconds after the kill: the leader key seen no longer
    naming the old leader (gone, or already taken if a poll missed the moment between), a new
    term's leader seen leading, its first acknowledged write, the killed node answering again;
    and which of the lease's expiry or the restarted node released the key."""
    key_free = first_event(events, 0.0, lambda e: e["node"] == "etcd" and e["event"] == "key"
                           and e["detail"] != old_leader)
    elected = first_event(events, 0.0, lambda e: e["event"] == "leads" and (e["term"] or 0) > old_term)
    back = first_event(events, 0.0, lambda e: e["node"] == old_leader and e["event"] in ("leads", "follows"))
    first_ack = first_at_or_after([w["end_s"] for w in writes
                                   if w["outcome"] == ACKNOWLEDGED and (w["term"] or 0) > old_term], 0.0)
    freed_by = "old leader restarted" if back <= key_free else "lease expired"
    return {"key_free_s": key_free, "elected_s": elected, "election_s": elected - key_free,
            "first_ack_s": first_ack, "elected_to_first_ack_s": first_ack - elected,
            "old_leader_back_s": back, "key_freed_by": freed_by if not math.isnan(key_free) else "never"}


def run_row(writes: list[dict], events: list[dict], fate: Fate, old_leader: str) -> dict:
    """One row of failover.csv from a run's writes and events (times relative to the kill)."""
    counts = {outcome: sum(w["outcome"] == outcome for w in writes) for outcome in (ACKNOWLEDGED, UNKNOWN, REFUSED)}
    outcome_of = {w["value"]: w["outcome"] for w in writes}
    rolled_unknown = sum(outcome_of[v] == UNKNOWN for v in fate.rolled_back)
    gap = longest_gap([w["end_s"] for w in writes if w["outcome"] == ACKNOWLEDGED], 0.0,
                      max((w["end_s"] for w in writes), default=0.0), min((w["start_s"] for w in writes), default=0.0))
    return {"attempted": len(writes), **counts, "lost": len(fate.lost), "rolled_back": len(fate.rolled_back),
            "rolled_back_acknowledged": len(fate.rolled_back_acknowledged),
            "rolled_back_kept": fate.rolled_back_kept, "rolled_back_unknown": rolled_unknown,
            "unknown_applied": fate.unknown_applied, "refused_applied": len(fate.refused_applied),
            "unavailable_s": gap.length_s, "unavailable_from_s": gap.start_s, "unavailable_to_s": gap.end_s,
            "unavailable_censored": gap.censored, **timings(events, writes, old_leader)}
