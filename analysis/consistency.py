"""How far the replicas are from the leader right after the writes, how long until they match,
and whether the six replication logs hold the same entries.

The pure functions (state diff, replay, log comparison) take plain data so they can be tested
without a cluster; the async ones only fetch and time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from tornado.httpclient import AsyncHTTPClient

from analysis.cluster import Endpoints, get_json

OUT_OF_ORDER_NOTE = "records whose seq is below an earlier record's seq (arrival order != seq order)"


# --- state comparison -------------------------------------------------------------------------


def diff_states(leader: dict[str, Any], follower: dict[str, Any]) -> dict[str, int]:
    """Keys the follower lacks, holds with another value, or holds although the leader does not."""
    missing = sum(1 for key in leader if key not in follower)
    stale = sum(1 for key in leader if key in follower and follower[key] != leader[key])
    extra = sum(1 for key in follower if key not in leader)
    return {"keys_missing": missing, "keys_stale": stale, "keys_extra": extra,
            "keys_differing": missing + stale + extra}


def apply_op(state: dict[str, Any], op: str, key: str | None, value: Any) -> None:
    if op == "set":
        state[key] = value
    elif op == "delete":
        state.pop(key, None)
    elif op == "clear":
        state.clear()
    elif op == "noop":  # a new leader's term-start entry: changes no key
        return
    else:
        raise ValueError(f"unknown op {op!r}")


def replay(entries: Iterable[tuple[int, str, str | None, Any]], upto: int | None = None,
           by_seq: bool = True) -> dict[str, Any]:
    """State after applying ``(seq, op, key, value)`` entries up to ``upto``.

    ``by_seq=False`` applies them in the order given (arrival order): the counterfactual of a
    follower that does not wait for sequence order.
    """
    items = sorted(entries, key=lambda e: e[0]) if by_seq else list(entries)
    state: dict[str, Any] = {}
    for seq, op, key, value in items:
        if upto is None or seq <= upto:
            apply_op(state, op, key, value)
    return state


def study_entries(writes: list[dict], clear_seq: int) -> list[tuple[int, str, str | None, Any]] | None:
    """The quorum's entries as the leader logged them (its clear, then the writes); None if a
    write got no sequence number, because then the leader's history is not fully known."""
    entries: list[tuple[int, str, str | None, Any]] = [(clear_seq, "clear", None, None)]
    for row in writes:
        if row.get("seq") is None:
            return None
        entries.append((int(row["seq"]), "set", row["key"], row["value"]))
    return entries


def is_prefix(follower: dict[str, Any], applied_seq: int, entries: list | None, clear_seq: int) -> bool | None:
    """Does the follower hold exactly the leader's state after entry ``applied_seq``?"""
    if entries is None or applied_seq < clear_seq:
        return None
    return replay(entries, applied_seq) == follower


# --- what the drawn delays predict ------------------------------------------------------------


def arrivals(writes: list[dict], follower: str) -> list[float]:
    """When (s, study clock) each write's send reaches ``follower``: start + its drawn delay.

    A lower bound: the leader draws when it gets the request, a little after the client sent it.
    """
    times = []
    for row in writes:
        delays = json.loads(row["delays_ms"]) if isinstance(row["delays_ms"], str) else row["delays_ms"]
        if follower in delays:
            times.append(row["start_s"] + delays[follower] / 1000)
    return times


def sends_pending(writes: list[dict], follower: str, at_s: float) -> int:
    """Sends to ``follower`` whose simulated delay had not yet run out at ``at_s``."""
    return sum(1 for t in arrivals(writes, follower) if t > at_s)


def predicted_converge(writes: list[dict], follower: str, last_s: float) -> float:
    """Seconds after the last write returned until the follower's last send lands (>= 0)."""
    times = arrivals(writes, follower)
    return max(0.0, max(times) - last_s) if times else float("nan")


# --- snapshots and convergence ----------------------------------------------------------------


async def snapshot(client: AsyncHTTPClient, endpoints: Endpoints) -> dict[str, dict]:
    """``/all`` and ``/status`` of all six nodes by node id, fetched at once to keep the picture tight."""
    names = list(endpoints.by_name)
    urls = [endpoints.by_name[n] for n in names]
    alls = asyncio.gather(*(get_json(client, f"{u}/all") for u in urls))
    statuses = asyncio.gather(*(get_json(client, f"{u}/status") for u in urls))
    alls, statuses = await asyncio.gather(alls, statuses)
    return {n: {"all": a, "status": s} for n, a, s in zip(names, alls, statuses)}


def matches(leader_all: dict, follower_all: dict) -> bool:
    return follower_all["applied_seq"] == leader_all["applied_seq"] and follower_all["data"] == leader_all["data"]


async def wait_converged(client: AsyncHTTPClient, endpoints: Endpoints, leader_all: dict,
                         already: dict[str, bool], ref: float, interval: float = 0.05,
                         timeout: float = 30.0, on_converged: Callable[[], None] = lambda: None,
                         ) -> dict[str, float | None]:
    """Poll the followers that did not match at the snapshot until each matches the leader.

    Returns seconds from ``ref`` (perf_counter of the last write's answer) to the first answer
    that matched; 0 for a follower that already matched at the snapshot; None on timeout.
    The resolution is the poll interval.
    """
    followers = dict(zip(endpoints.follower_ids, endpoints.followers))
    result: dict[str, float | None] = {name: 0.0 for name in followers if already.get(name)}
    deadline = time.perf_counter() + timeout
    while len(result) < len(followers) and time.perf_counter() < deadline:
        await asyncio.sleep(interval)
        waiting = [name for name in followers if name not in result]
        answers = await asyncio.gather(*(get_json(client, f"{followers[n]}/all") for n in waiting))
        seen = time.perf_counter() - ref
        for name, answer in zip(waiting, answers):
            if matches(leader_all, answer):
                result[name] = seen
                on_converged()
    return {name: result.get(name) for name in followers}


def snapshot_rows(quorum: int, snap: dict[str, dict], writes: list[dict], clear_seq: int,
                  snap_s: float, last_s: float, leader: str = "leader") -> list[dict]:
    """One consistency.csv row per follower of ``leader`` (a node id), describing it at the snapshot."""
    leader_all = snap[leader]["all"]
    entries = study_entries(writes, clear_seq)
    rows = []
    for name, node in snap.items():
        if name == leader:
            continue
        data, status = node["all"], node["status"]
        applied = int(data["applied_seq"])
        rows.append({
            "quorum": quorum,
            "follower": name,
            "leader_last_seq": int(snap[leader]["status"]["last_seq"]),
            "applied_seq": applied,
            "entries_behind": int(leader_all["applied_seq"]) - applied,
            "received_seq": status.get("received_seq"),
            "waiting_for_gap": int(status.get("waiting_for_gap") or 0),
            **diff_states(leader_all["data"], data["data"]),
            "identical_at_snapshot": matches(leader_all, data),
            "prefix_consistent": is_prefix(data["data"], applied, entries, clear_seq),
            "snapshot_after_ms": (snap_s - last_s) * 1000,
            "sends_pending_est": sends_pending(writes, name, snap_s),
            "predicted_converge_s": predicted_converge(writes, name, last_s),
        })
    return rows


# --- logs -------------------------------------------------------------------------------------


def read_log(path: str) -> list[tuple[int, str, str | None, Any, float]]:
    """``(seq, op, key, value, ts)`` for each record, in file order."""
    from node.log import iter_entries

    return [(e.seq, e.op, e.key, e.value, e.ts) for e in iter_entries(path)]


def out_of_order(seqs: list[int]) -> int:
    """Records that arrived after a record with a higher seq."""
    count, highest = 0, 0
    for seq in seqs:
        if seq < highest:
            count += 1
        highest = max(highest, seq)
    return count


def timestamp_order(records: list[tuple]) -> dict[str, int]:
    """Consecutive entries (by seq) whose ``ts`` does not increase: what last-write-wins would trip on."""
    ts = [r[4] for r in sorted(records, key=lambda r: r[0])]
    pairs = list(itertools.pairwise(ts))
    return {"ts_inversions": sum(1 for a, b in pairs if b < a), "ts_ties": sum(1 for a, b in pairs if b == a)}


def compare_follower_log(leader: list[tuple], follower: list[tuple], since_seq: int = 0) -> dict[str, Any]:
    """One follower's log against the leader's, as sets of entries keyed by seq.

    Missing/extra/conflicting cover the whole logs; the arrival-order figures only entries from
    ``since_seq`` on (the quorum's own clear and writes), so each quorum is judged on its own.
    """
    lead = {r[0]: r[:4] for r in leader}
    mine: dict[int, tuple] = {}
    duplicates = 0
    for r in follower:
        duplicates += r[0] in mine
        mine.setdefault(r[0], r[:4])
    missing = sorted(set(lead) - set(mine))
    extra = sorted(set(mine) - set(lead))
    conflicting = sorted(s for s in set(lead) & set(mine) if lead[s] != mine[s])
    recent = [r[:4] for r in follower if r[0] >= since_seq]
    leader_state = replay([r[:4] for r in leader if r[0] >= since_seq])
    arrival_state = replay(recent, by_seq=False)
    return {
        "records": len(follower), "missing": len(missing), "extra": len(extra),
        "conflicting": len(conflicting), "duplicates": duplicates,
        "first_missing": missing[:10], "first_conflicting": conflicting[:10],
        "out_of_order": out_of_order([r[0] for r in recent]),
        "arrival_order_divergent_keys": diff_states(leader_state, arrival_state)["keys_differing"],
        "equal": not (missing or extra or conflicting),
    }


def builtin_compare_logs(paths: list[str], since_seq: int = 0) -> dict[str, Any]:
    """Compare the leader's log (first path) with each follower's, reading them with node.log."""
    leader = read_log(paths[0])
    followers = {path: compare_follower_log(leader, read_log(path), since_seq) for path in paths[1:]}
    return {
        "source": "analysis.consistency (node.log.iter_entries)",
        "equal": all(f["equal"] for f in followers.values()),
        "leader": {"path": paths[0], "records": len(leader),
                   "last_seq": max((r[0] for r in leader), default=0), **timestamp_order(leader)},
        "followers": followers,
    }


def compare_logs(paths: list[str]) -> dict[str, Any]:
    """The project's log comparison (``node.logtool.compare_logs``) when it exists, else ours.

    Imported lazily because the tool is newer than this study; both take the leader's log first.
    """
    try:
        from node.logtool import compare_logs as tool_compare
    except ImportError:
        return builtin_compare_logs(paths)
    result = dict(tool_compare(list(paths)))
    result.setdefault("source", "node.logtool.compare_logs")
    return result


def logs_equal(result: dict[str, Any]) -> bool | None:
    """The verdict of a comparison result, whichever tool produced it (None if it has none)."""
    for key in ("equal", "identical", "consistent", "match", "ok"):
        if isinstance(result.get(key), bool):
            return result[key]
    return None
