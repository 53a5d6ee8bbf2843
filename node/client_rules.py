"""The rules of ``node.client``, apart from its I/O: what a write's answer proves, which node
leads according to the /health answers, and how long to wait before trying again.

    write_verdict(421, {...})      # "retry": the write was not taken, send it to the leader named
    pick_leader([(address, health), ...])   # Leader(node_id, address, term) or None
"""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple

FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0


class Leader(NamedTuple):
    node_id: str | None
    address: str
    term: int | None


class Backoff:
    """Waits between retries: 50 ms doubling to 1 s, never past the call's deadline."""

    def __init__(self) -> None:
        self.delay = FIRST_BACKOFF_S

    async def sleep(self, deadline: float) -> bool:
        """Sleep the next delay (cut at ``deadline``); False if no time is left."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(self.delay, remaining))
        self.delay = min(self.delay * 2, MAX_BACKOFF_S)
        return time.monotonic() < deadline


def write_verdict(code: int, answer: dict) -> str:
    """What a write's answer proves: ok, fail (not applied), unknown, or retry (not taken)."""
    if code == 200:
        return "ok"
    if code == 421 or (code == 403 and "leader" in answer):  # 403: a follower of an older build
        return "retry"
    if code == 503:
        return "unknown" if "outcome" in answer else "retry"
    if 400 <= code < 500:
        return "fail"
    return "unknown"  # 504 and any other 5xx: the leader may have logged it


def pick_leader(answers: list[tuple[str, dict]]) -> Leader | None:
    """The leader the /health answers agree on: a node that says it leads in the highest term
    seen, else the leader that nodes of that term name; None while they name none."""
    if not answers:
        return None
    top = max(_term(answer) for _, answer in answers)
    for address, answer in answers:
        if answer.get("role") == "leader" and _term(answer) == top:
            return Leader(answer.get("node_id"), address, answer.get("term"))
    for _, answer in answers:
        if _term(answer) == top and answer.get("leader_address"):
            return Leader(answer.get("leader_id"), answer["leader_address"], answer.get("term"))
    return None


def _term(answer: dict) -> int:
    term = answer.get("term")
    return term if isinstance(term, int) else 0
