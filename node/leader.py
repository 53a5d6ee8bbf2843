"""The leader: the only node that accepts writes.

A write becomes a log entry with the next sequence number (no gaps, never reused: a restarted
leader continues after the last entry of its log), is appended to the leader's log, applied to
its state, and pushed to every follower. The client's answer waits for ``WRITE_QUORUM``
follower confirmations and for the leader's own log to be durable, whichever is later.

The leader's log is synced when entries are shipped, not when they are written: under load
writes arrive over several loop iterations while the follower channels gather them into one
request (see ``node.replication``), and one sync per shipment instead of one per iteration
keeps the loop free to take the rest. No follower holds an entry its leader could lose to a
power cut for longer than one sync, as before; ``/log`` serves only durable entries.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from node.config import Config
from node.limits import REPLICATE_BODY_FACTOR
from node.log import Entry, LogFile, encode_record, record_body
from node.quorum import FollowerProgress, QuorumTimeout, QuorumTracker
from node.replication import Replicator
from node.store import Store
from node.tasks import InFlight

log = logging.getLogger(__name__)


class LeaderLogError(Exception):
    """The leader's own log is not a gap-free sequence 1..n."""


@dataclass
class WriteOutcome:
    entry: Entry
    confirmations: int
    delays_ms: dict[str, float]


class WriteTimeout(QuorumTimeout):
    """A quorum timeout that also carries the delays drawn for the entry."""

    def __init__(self, timeout: QuorumTimeout, delays_ms: dict[str, float]):
        super().__init__(timeout.seq, timeout.confirmations, timeout.quorum, timeout.timeout_ms)
        self.delays_ms = delays_ms


class PendingWrite:
    """Joins a write's two conditions, quorum and local durability, into one Future."""

    __slots__ = ("entry", "delays", "future", "_waiting", "_timeout", "_error", "_writes", "_confirmations",
                 "_log", "_record")

    def __init__(self, entry: Entry, delays: dict[str, float], quorum: asyncio.Future,
                 log_file: LogFile, record: int, writes: InFlight) -> None:
        self.entry, self.delays = entry, delays
        self.future = asyncio.get_running_loop().create_future()
        self._waiting, self._timeout, self._error = 2, None, None
        self._writes = writes
        self._log, self._record = log_file, record
        writes.started()
        quorum.add_done_callback(self._quorum_done)

    def _quorum_done(self, quorum: asyncio.Future) -> None:
        # Usually already durable: the sync started when the entry was shipped.
        if self._log.synced >= self._record:
            self._one_done()
        else:
            self._log.sync_future(self._record).add_done_callback(self._durable_done)
        error = quorum.exception()
        if isinstance(error, QuorumTimeout):
            self._timeout = WriteTimeout(error, self.delays)
        elif error is not None:
            self._error = error
        else:
            self._confirmations = quorum.result()
        self._one_done()

    def _durable_done(self, durable: asyncio.Future) -> None:
        error = durable.exception() if not durable.cancelled() else asyncio.CancelledError()
        if error is not None:
            self._error = error
        self._one_done()

    def _one_done(self) -> None:
        self._waiting -= 1
        if self._waiting:
            return
        self._writes.finished()
        if self.future.done():
            return
        if self._error is not None:
            self.future.set_exception(self._error)
        elif self._timeout is not None:
            self.future.set_exception(self._timeout)
        else:
            self.future.set_result(WriteOutcome(self.entry, self._confirmations, self.delays))


class Leader:
    role = "leader"

    def __init__(self, config: Config, log_file: LogFile, entries: list[Entry]) -> None:
        self.config = config
        self.log = log_file
        self.store = Store()
        self.entries: list[Entry] = []  # entries[i].seq == i + 1
        self.replayed = len(entries)  # seq n > replayed is the log's record n - replayed since open
        for entry in entries:
            if entry.seq != len(self.entries) + 1:
                raise LeaderLogError(
                    f"leader log {log_file.path} jumps from seq {len(self.entries)} to {entry.seq}; "
                    f"a leader log must hold every entry from 1 in order"
                )
            self.entries.append(entry)
            self.store.apply(entry)
        self.tracker = QuorumTracker(config.write_quorum)
        self.progress = {address: FollowerProgress(address) for address in config.followers}
        self.writes = InFlight()
        self.replicator = Replicator(
            self.progress, config.min_delay_ms, config.max_delay_ms,
            config.replication_secret, self.tracker.confirm, random.Random(config.delay_seed),
            max_batch_bytes=REPLICATE_BODY_FACTOR * config.max_body_bytes, linger_us=config.batch_linger_us,
            on_ship=log_file.start_sync,
        )
        if self.entries:
            log.info("replayed %d entries from %s; numbering continues at %d",
                     len(self.entries), log_file.path, self.last_seq + 1)

    @property
    def last_seq(self) -> int:
        return len(self.entries)

    def start(self) -> None:
        """Open the connections to the followers; followers pull what they missed by themselves."""
        self.replicator.warm_up()

    async def submit(self, op: str, key: str | None, value: Any = None) -> WriteOutcome:
        """Log, apply and replicate one operation; return once the quorum confirmed it."""
        return await self.begin(op, key, value)

    def begin(self, op: str, key: str | None, value: Any = None) -> asyncio.Future:
        """Log, apply and start replicating one operation, synchronously; the returned Future
        gives the WriteOutcome (or raises WriteTimeout) once the quorum confirmed the entry and
        the leader's own log is durable, whichever is later.

        No task and no await per write: at thousands of writes per second the leader's cost
        per write is what bounds the whole cluster.
        """
        entry = Entry(seq=self.last_seq + 1, op=op, key=key, value=value, ts=time.time())
        # Numbered and appended in one go: entries reach the log in seq order.
        record = encode_record(entry)
        self.log.append_record(record)
        self.entries.append(entry)
        self.store.apply(entry)
        quorum = self.tracker.expect(entry.seq, self.config.write_timeout_ms)
        delays = self.replicator.replicate(entry.seq, record_body(record))
        return PendingWrite(entry, delays, quorum, self.log, self.log.appended, self.writes).future

    def durable_through(self, seq: int) -> asyncio.Future:
        """Done once entries up to ``seq`` are durable in the leader's log."""
        return self.log.sync_future(max(0, seq - self.replayed))

    def entries_between(self, after: int, upto: int | None, limit: int) -> list[Entry]:
        """Entries with ``after < seq <= upto`` (``upto`` defaults to the last), at most ``limit``."""
        start = max(after, 0)
        end = self.last_seq if upto is None else min(upto, self.last_seq)
        return self.entries[start:max(start, min(end, start + limit))]

    def note_follower_pull(self, node_id: str, applied_seq: int) -> None:
        for progress in self.progress.values():
            if progress.node_id == node_id:
                progress.reported_applied(applied_seq)

    def status(self) -> dict:
        followers = {
            address: {
                "node_id": p.node_id,
                "acked_seq": p.match,
                "lag": self.last_seq - p.match,
                "last_error": p.last_error,
                "requests": p.requests,
                "entries_sent": p.entries_sent,
                "entries_per_request": round(p.entries_sent / p.requests, 2) if p.requests else None,
            }
            for address, p in self.progress.items()
        }
        return {
            "role": self.role,
            "node_id": self.config.node_id,
            "last_seq": self.last_seq,
            "applied_seq": self.store.applied_seq,
            "keys": len(self.store.keys()),
            "write_quorum": self.config.write_quorum,
            "min_delay_ms": self.config.min_delay_ms,
            "max_delay_ms": self.config.max_delay_ms,
            "write_timeout_ms": self.config.write_timeout_ms,
            "delay_seed": self.config.delay_seed,
            "batch_linger_us": self.config.batch_linger_us,
            "fsync": self.config.fsync,
            "replications_in_flight": self.replicator.in_flight,
            "followers": followers,
        }

    async def drain(self, timeout: float) -> None:
        """Let writes in progress get their answer before shutting down."""
        if not await self.writes.wait_idle(timeout):
            log.warning("shutting down with %d writes still waiting for their quorum", self.writes.count)

    async def close(self) -> None:
        await self.replicator.close()
        self.log.close()
