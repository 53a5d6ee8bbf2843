"""Jepsen-style set test: record every operation a client saw, then check the history.

Clients write unique keys through ``node.client`` and record each operation as ``ok`` (with the
sequence number the leader gave it), ``fail`` (a definite error answer, the quorum timeout, or
never sent: no leader reachable) or ``unknown`` (no answer: the connection broke or timed out,
or the leader stopped while the write waited). After the fault heals and replication settles
the checker reads every node and classifies:

* lost: acknowledged (ok) but missing or different on some node. Must be 0.
* unexpected: present on some node but never written by this run. Must be 0.
* recovered: failed or unknown, yet present. Allowed (a timeout does not undo a write), but
  counted, and it must then be present on *every* node like any other entry.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from node.client import Client, WriteResult

UNREACHABLE_BACKOFF_S = 0.25
REFUSED_BACKOFF_S = 0.1
# While no leader is reachable a write gives up after this long ("fail": it was never sent),
# so a bounded load keeps producing outcomes through a leader outage instead of each write
# waiting out its whole request timeout.
LEADER_WAIT_S = 1.0


@dataclass
class Op:
    key: str
    value: dict
    status: str = "invoked"  # invoked -> ok | fail | unknown
    seq: int | None = None
    term: int | None = None  # of the leader that acknowledged it
    error: str | None = None
    latency: float = 0.0
    finished_at: float | None = None  # time.monotonic() when the outcome arrived


@dataclass
class LoadResult:
    ops: list[Op] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(op.status == status for op in self.ops)


def record_result(op: Op, result: WriteResult) -> None:
    """The client's outcome as the history's. A 504 (quorum timeout) stays "fail" as it always
    was here: ``check`` treats fail and unknown alike (either may turn out present), and only
    an acknowledged write must be on every node."""
    op.status = "fail" if result.code == 504 else result.status
    op.seq = result.seq if result.status == "ok" else None
    op.term = result.term if result.status == "ok" else None
    op.error, op.latency = result.error, result.latency
    op.finished_at = time.monotonic()


class Load:
    """A bounded write load through ``node.client``: at most ``count`` ops and ``max_seconds``,
    ``concurrency`` writers on one asyncio loop in a background thread. With ``addresses`` (every
    node's URL or host:port) the writers find the leader among them and follow a change of leader.

        load = Load(url, "kill-", count=200).start()
        load.wait_completed(20)        # condition: the load is really running
        ... inject the fault ...
        result = load.join()
    """

    def __init__(self, leader_url: str, prefix: str, count: int = 200, concurrency: int = 8,
                 max_seconds: float = 60.0, request_timeout: float = 15.0, addresses: list[str] | None = None) -> None:
        self.leader_url = leader_url
        self.addresses = [leader_url] + [a for a in (addresses or []) if a != leader_url]
        self.prefix = prefix
        self.count = count
        self.concurrency = concurrency
        self.max_seconds = max_seconds
        self.request_timeout = request_timeout
        self.result = LoadResult()
        self._next = 0
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._run, name=f"load-{prefix}", daemon=True)
        self._error: BaseException | None = None
        self._deadline = 0.0
        self._stop = threading.Event()

    def start(self) -> Load:
        self._deadline = time.monotonic() + self.max_seconds
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._writers())
        except BaseException as exc:  # noqa: BLE001 - handed to join()
            self._error = exc
        finally:
            with self._progress:
                self._progress.notify_all()

    async def _writers(self) -> None:
        client = Client(self.addresses, timeout=self.request_timeout, leader_wait=LEADER_WAIT_S,
                        max_clients=self.concurrency + 8)
        try:
            await asyncio.gather(*(self._writer(client) for _ in range(self.concurrency)))
        finally:
            client.close()

    def _take(self) -> Op | None:
        with self._lock:
            if self._stop.is_set() or self._next >= self.count or time.monotonic() > self._deadline:
                return None
            i = self._next
            self._next += 1
            op = Op(key=f"{self.prefix}{i}", value={"client_op": i, "prefix": self.prefix})
            self.result.ops.append(op)
            return op

    async def _writer(self, client: Client) -> None:
        while (op := self._take()) is not None:
            result = await client.write(op.key, op.value)
            record_result(op, result)
            with self._progress:
                self._progress.notify_all()
            if result.status != "ok":
                # No node answered, or a node refused at once (no leader yet, a lease run out):
                # back off like a real client, instead of burning the whole bounded load in a
                # few milliseconds.
                await asyncio.sleep(UNREACHABLE_BACKOFF_S if result.code is None else REFUSED_BACKOFF_S)

    def wait_completed(self, n: int, timeout: float = 60.0) -> None:
        """Block until at least ``n`` operations have an outcome (or the load ended)."""
        deadline = time.monotonic() + timeout
        with self._progress:
            while sum(op.status != "invoked" for op in self.result.ops) < n:
                if not self._thread.is_alive():
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"load did not reach {n} completed operations in {timeout} s")
                self._progress.wait(remaining)

    def acknowledged_since(self, since: float, term: int | None = None) -> int:
        """Operations acknowledged after ``since`` (``time.monotonic()``), in ``term`` if given."""
        return sum(1 for op in list(self.result.ops) if op.status == "ok" and op.finished_at is not None
                   and op.finished_at > since and (term is None or op.term == term))

    def wait_acknowledged(self, n: int, since: float, term: int | None = None, timeout: float = 60.0) -> None:
        """Block until ``n`` operations were acknowledged after ``since`` (in ``term`` if given):
        a fault case waits for the writes it is about, whatever the machine's speed."""
        deadline = time.monotonic() + timeout
        with self._progress:
            while self.acknowledged_since(since, term) < n:
                remaining = deadline - time.monotonic()
                if not self._thread.is_alive() or remaining <= 0:
                    got = self.acknowledged_since(since, term)
                    ended = "the load ended" if not self._thread.is_alive() else f"{timeout} s passed"
                    late = [op for op in list(self.result.ops) if op.finished_at and op.finished_at > since]
                    errors = sorted({(op.error or "")[:160] for op in late if op.status != "ok"})[:3]
                    raise AssertionError(f"{got} of {n} writes acknowledged after the mark"
                                         f"{f' in term {term}' if term else ''}: {ended} ({len(self.result.ops)} "
                                         f"of at most {self.count} attempted, {len(late)} finished since the mark; "
                                         f"their errors: {errors})")
                self._progress.wait(min(remaining, 0.5))

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> LoadResult:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.result


@dataclass
class Verdict:
    attempted: int
    ok: int
    failed: int
    unknown: int
    lost: list[str]
    unexpected: list[str]
    recovered: list[str]
    partial: list[str]  # recovered on some nodes but not all: replicas diverge

    @property
    def valid(self) -> bool:
        return not (self.lost or self.unexpected or self.partial)


def check(result: LoadResult, prefix: str, node_data: dict[str, dict]) -> Verdict:
    """Classify a history against every node's final state (``{node: {key: value}}``)."""
    written = {op.key: op for op in result.ops}
    lost, recovered, partial = [], [], []
    for op in result.ops:
        present = [node for node, data in node_data.items() if data.get(op.key) == op.value]
        if op.status == "ok":
            if len(present) != len(node_data):
                lost.append(op.key)
        elif present:
            (recovered if len(present) == len(node_data) else partial).append(op.key)
    unexpected = sorted({key for data in node_data.values() for key in data
                         if key.startswith(prefix) and key not in written})
    return Verdict(
        attempted=len(result.ops), ok=result.count("ok"), failed=result.count("fail"),
        unknown=result.count("unknown"), lost=lost, unexpected=unexpected,
        recovered=recovered, partial=partial,
    )


def check_sequence(result: LoadResult, leader_log: dict, compacted_through: int = 0) -> list[str]:
    """Every acknowledged op sits in the leader's log under the seq it was acknowledged with
    (those at or below ``compacted_through`` are held by a snapshot instead: the state check
    covers them)."""
    wrong = []
    for op in result.ops:
        if op.status != "ok" or op.seq <= compacted_through:
            continue
        entry = leader_log.get(op.seq)
        if entry is None or entry.key != op.key or entry.value != op.value:
            wrong.append(f"{op.key}@{op.seq}")
    return wrong


FAULT_TABLE: list[dict] = []


def record(fault: str, verdict: Verdict, converge_s: float, note: str = "", rolled_back: int | str = "",
           first_write_s: float | str = "", unavailable_s: float | str = "") -> None:
    """One row of the fault table; ``rolled_back`` (entries moved to rollback files),
    ``first_write_s`` (from the start of a promotion to the new leader's first acknowledged
    write) and ``unavailable_s`` (the longest stretch without an acknowledged write after the
    fault) are filled in by the failover cases."""
    FAULT_TABLE.append({
        "fault": fault, "attempted": verdict.attempted, "acknowledged": verdict.ok,
        "failed": verdict.failed, "unknown": verdict.unknown, "recovered": len(verdict.recovered),
        "lost": len(verdict.lost), "unexpected": len(verdict.unexpected), "rolled_back": rolled_back,
        "converge_s": round(converge_s, 2),
        "first_write_s": round(first_write_s, 2) if isinstance(first_write_s, float) else first_write_s,
        "unavailable_s": round(unavailable_s, 2) if isinstance(unavailable_s, float) else unavailable_s, "note": note,
    })


def format_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)
