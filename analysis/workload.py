"""The writes of one quorum: an empty store first, then a fixed number of concurrent writes.

Every write is recorded with what the leader drew for it (one simulated delay per follower),
because a write's latency is explained by those draws: it cannot return before the k-th
fastest follower's delay has passed, so ``latency - kth_smallest(delays)`` is the cost of
everything that is not simulated delay (HTTP, JSON, fsync, the event loops).

The writes (and the clear before them) go through ``node.client``: the client sends each to the
node that leads and follows a 421 that names another, so the study writes to whichever node
leads. Its own cost is microseconds per write, against the milliseconds measured.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tornado.httpclient import AsyncHTTPClient

from analysis import NODE_NAMES
from analysis.cluster import Endpoints, get_json
from node.client import Client

NO_ANSWER = 599  # the ``status`` of a write that got no HTTP answer (as Tornado's clients say)


@dataclass(frozen=True)
class PlannedWrite:
    index: int
    key: str
    value: str


def kth_smallest(delays: Iterable[float], k: int) -> float:
    """The k-th smallest of the drawn delays: the earliest moment the k-th confirmation can exist."""
    ordered = sorted(delays)
    if not 1 <= k <= len(ordered):
        raise ValueError(f"k={k} is outside 1..{len(ordered)} delays")
    return ordered[k - 1]


def expected_kth(min_ms: float, max_ms: float, k: int, n: int) -> float:
    """Expected k-th smallest of n independent uniform(min, max) draws: min + (max-min)·k/(n+1)."""
    if not 1 <= k <= n:
        raise ValueError(f"k={k} is outside 1..{n}")
    return min_ms + (max_ms - min_ms) * k / (n + 1)


def std_kth(min_ms: float, max_ms: float, k: int, n: int) -> float:
    """Standard deviation of that order statistic (a Beta(k, n+1-k) scaled to the range)."""
    return (max_ms - min_ms) * (k * (n + 1 - k) / ((n + 1) ** 2 * (n + 2))) ** 0.5


def plan_writes(count: int, keys: int, quorum: int, seed: int) -> list[PlannedWrite]:
    """Keys drawn (seeded) from a small key space so writes collide; every value is unique.

    Collisions are what make staleness visible: a replica that lags shows an older value.
    """
    rng = random.Random(f"{seed}:{quorum}")
    names = [f"key-{i:02d}" for i in range(keys)]
    return [PlannedWrite(i, rng.choice(names), f"q{quorum}-w{i:04d}") for i in range(count)]


async def write_one(client: Client, planned: PlannedWrite, quorum: int, t0: float,
                    names: dict[str, str]) -> dict[str, Any]:
    """Send one write and turn the answer into one row of writes.csv."""
    started_unix = time.time()
    start = time.perf_counter()
    result = await client.write(planned.key, planned.value)
    end = time.perf_counter()
    status = NO_ANSWER if result.code is None else result.code
    answer = result.answer or {}
    drawn = (answer.get("debug") or {}).get("replication_delays_ms") or {}
    delays = {names.get(address, address): float(ms) for address, ms in drawn.items()}
    latency_ms = (end - start) * 1000
    kth = kth_smallest(delays.values(), quorum) if len(delays) >= quorum else float("nan")
    return {
        "quorum": quorum,
        "write": planned.index,
        "key": planned.key,
        "value": planned.value,
        "status": status,
        "success": result.status == "ok" and answer.get("success") is True,
        "seq": answer.get("seq"),
        "start_unix": started_unix,
        "start_s": start - t0,
        "end_s": end - t0,
        "latency_ms": latency_ms,
        "confirmations": answer.get("confirmations"),
        "delays_ms": json.dumps(delays, sort_keys=True),
        "kth_delay_ms": kth,
        "overhead_ms": latency_ms - kth,
        "error": None if status == 200 else result.error,
    }


async def run_writes(client: Client, plan: list[PlannedWrite], quorum: int, concurrency: int,
                     names: dict[str, str],
                     on_done: Callable[[], None] = lambda: None) -> tuple[list[dict], float]:
    """Send the planned writes with exactly ``concurrency`` in flight (fewer only at the tail).

    Returns the rows and ``t0``, the perf_counter origin of their ``start_s``/``end_s``.
    """
    queue = list(reversed(plan))
    rows: list[dict] = []
    t0 = time.perf_counter()

    async def worker() -> None:
        while queue:
            rows.append(await write_one(client, queue.pop(), quorum, t0, names))
            on_done()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(plan)))))
    rows.sort(key=lambda row: row["write"])
    return rows, t0


def follower_names(leader_status: dict, peers: Sequence[str] = NODE_NAMES) -> dict[str, str]:
    """Follower address (as the leader knows it) -> node id: the id the follower gave in its
    confirmations, else the id at its place among ``peers`` without the leader (PEERS order)."""
    followers = leader_status["followers"]
    others = [name for name in peers if name != leader_status.get("node_id", "leader")]
    names = {}
    for i, address in enumerate(followers):
        progress = followers[address] if isinstance(followers, dict) else None
        reported = progress.get("node_id") if isinstance(progress, dict) else None
        names[address] = reported or (others[i] if i < len(others) else f"follower{i + 1}")
    return names


async def reset_store(writer: Client, http: AsyncHTTPClient, endpoints: Endpoints, timeout: float = 30.0,
                      interval: float = 0.05) -> int:
    """Replicated clear (through ``writer``), then wait until every follower has applied
    everything the leader has.

    Waiting matters: a clear still on its way to a follower would wipe that follower's copy of
    the study's first writes and be mistaken for staleness. Returns the clear's sequence number.
    """
    result = await writer.clear(timeout=timeout)
    if result.status != "ok":
        raise RuntimeError(f"DELETE /clear ended {result.status} (HTTP {result.code}) at "
                           f"{result.leader or 'no leader'}: {result.error}")
    target = (await get_json(http, f"{endpoints.leader}/status"))["last_seq"]
    deadline = time.monotonic() + timeout
    while True:
        statuses = await asyncio.gather(*(get_json(http, f"{url}/status") for url in endpoints.followers))
        applied = [s["applied_seq"] for s in statuses]
        if all(seq == target for seq in applied):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"followers {', '.join(endpoints.follower_ids)} did not reach seq {target} "
                               f"within {timeout:.0f} s: {applied}")
        await asyncio.sleep(interval)
    leader_all = await get_json(http, f"{endpoints.leader}/all")
    if leader_all["count"] != 0:
        raise RuntimeError(f"leader {endpoints.leader_id} still holds {leader_all['count']} keys after the clear")
    return int(result.seq)
