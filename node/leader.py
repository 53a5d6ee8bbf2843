"""The leader: the only node that accepts writes. Wires ``node.core.leading`` to the log file,
the peers' HTTP client and the IOLoop's timers.

A write is numbered by the core, appended to the leader's log, applied to its state and handed
to the core, which schedules it for every follower. The client's answer waits for the write's
quorum Future (resolved when ``WRITE_QUORUM`` followers confirmed the entry durable) and for
the leader's own log to be durable, whichever is later.

The leader's log is synced when entries are shipped, not when they are written: under load
writes arrive over several loop iterations while the channels gather them into one request,
and one sync per shipment instead of one per iteration keeps the loop free to take the rest.
No follower holds an entry its leader could lose to a power cut for longer than one sync;
``/log`` serves only durable entries.

    leader = Leader(config, limits, log_file, entries)
    outcome = await leader.write("set", "k", 1)     # WriteOutcome, or raises WriteTimeout
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from tornado.httpclient import HTTPResponse

from node import codec, peers
from node.config import Config
from node.core.leading import LeaderCore, LeaderLogError, is_refusal
from node.core.quorum import QuorumTimeout
from node.core.shipping import Batch
from node.limits import Limits
from node.log import Entry, LogFile, encode_record, record_body
from node.store import Store
from node.tasks import InFlight, TaskGroup
from node.wakeup import Wakeup

log = logging.getLogger(__name__)

__all__ = ["Leader", "LeaderLogError", "LeaderSteppedDown", "LeaderStopping", "WriteOutcome", "WriteTimeout"]

# How long the writes failed at shutdown get to write their 503 before connections close.
ANSWER_GRACE_S = 1.0


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


class LeaderStopping(Exception):
    """The leader shut down while a write waited for its quorum: its outcome is unknown."""

    def __init__(self, seq: int, confirmations: int, quorum: int):
        self.seq, self.confirmations, self.quorum = seq, confirmations, quorum
        super().__init__(
            f"the leader is shutting down; write seq {seq} had {confirmations} of {quorum} required follower "
            f"confirmations. The entry is in the leader's log and replicates when the leader is back, so the "
            f"outcome is unknown: read the key to find out")


class LeaderSteppedDown(LeaderStopping):
    """This leader stepped down (a later term began, or its lease ran out) while the write waited."""

    def __init__(self, seq: int, confirmations: int, quorum: int, reason: str):
        self.seq, self.confirmations, self.quorum = seq, confirmations, quorum
        Exception.__init__(
            self, f"this node stepped down ({reason}) while write seq {seq} had {confirmations} of {quorum} required "
                  f"follower confirmations; the outcome is unknown: the new leader keeps the write if a quorum held "
                  f"it. Read the key on the new leader")


class LeaseLost(LeaderStopping):
    """The leader lease ran out (etcd unreachable) while the write waited: not acknowledged."""

    def __init__(self, seq: int, confirmations: int, quorum: int):
        self.seq, self.confirmations, self.quorum = seq, confirmations, quorum
        Exception.__init__(
            self, f"write seq {seq} reached {confirmations} of {quorum} confirmations, but this leader's lease in etcd "
                  f"could not be renewed in time, so it acknowledges nothing more: the outcome is unknown (the next "
                  f"leader keeps the write if a quorum held it). Read the key on the leader /health names")


class Leader:
    role = "leader"

    def __init__(self, config: Config, limits: Limits, log_file: LogFile, entries: list[Entry],
                 host=None) -> None:
        """``host`` (the node, ``node.replica``) owns the terms: it gives this leader its term and
        history and hears when a follower knows a later term."""
        self.config, self.limits, self.log = config, limits, log_file
        self.host = host
        self.term = host.state.term if host is not None else 1
        try:
            self.core = LeaderCore(
                list(config.followers), config.write_quorum, config.write_timeout_ms,
                config.min_delay_ms, config.max_delay_ms, linger_us=config.batch_linger_us,
                max_batch_bytes=limits.max_batch_bytes, rng=random.Random(config.delay_seed), entries=entries,
                term=self.term, base_seq=host.compactor.base_seq if host is not None else 0)
        except LeaderLogError as exc:
            raise LeaderLogError(f"leader log {log_file.path} {exc}") from None
        self.store = host.store if host is not None else Store()
        self.store.reset()  # to the snapshot, if any; then the entries after it
        for entry in self.core.entries_from(self.store.applied_seq + 1):
            self.store.apply(entry)
        self.replayed = self.core.last_seq  # seq n > replayed is the log's record n - replayed since open
        self.client = peers.make_client()
        # Write requests being answered (counted by the handlers, on the node: they outlive a role).
        self.writes = host.writes if host is not None else InFlight()
        self._quorum_waiters: dict[int, asyncio.Future] = {}
        self._wakeup = Wakeup(self._step)
        self.background = TaskGroup("term watch")
        # When each follower last answered (a push or a /health probe); the coordinator hands the
        # key on when too few did lately. Counted from now: a new leader has not asked yet.
        started = time.monotonic()
        self.last_heard: dict[str, float] = {address: started for address in config.followers}
        self._step_planned = False
        self._closed = False
        if entries:
            log.info("replayed %d entries from %s; numbering continues at %d",
                     len(entries), log_file.path, self.last_seq + 1)

    @property
    def last_seq(self) -> int:
        return self.core.last_seq

    def start(self) -> None:
        """Open a connection to every follower now (curl keeps it for the pushes), so the first
        writes after a (re)start do not wait for name lookups and handshakes, and ask each for
        its term. Followers pull what they missed by themselves."""
        self._check_terms()
        self.background.spawn(self._term_watch())

    def _check_terms(self) -> None:
        for address in self.config.followers:
            self.client.fetch(peers.health_request(address), raise_error=False).add_done_callback(
                lambda done, address=address: self._health_answer(address, done))

    async def _term_watch(self) -> None:
        """Every CATCHUP_INTERVAL, ask the peers their term: a leader that was restarted, paused or
        cut off learns of a later term and steps down even when no write reaches it."""
        while not self._closed:
            await asyncio.sleep(self.config.catchup_interval_ms / 1000)
            if not self._closed:
                self._check_terms()

    def _health_answer(self, address: str, done: asyncio.Future) -> None:
        if self._closed or done.exception() is not None:
            return  # a follower that is down shows up in the first push
        response = done.result()
        if response.code == 200:
            self.last_heard[address] = time.monotonic()
            self._later_term(response.body)

    async def write(self, op: str, key: str | None, value: Any = None) -> WriteOutcome:
        """Log, apply and replicate one operation; return once the quorum confirmed it and the
        leader's own log holds it durably. Raises WriteTimeout after WRITE_TIMEOUT (the entry
        stays and keeps replicating)."""
        entry, delays, quorum = self.start_write(op, key, value)
        try:
            confirmations = await quorum
        except QuorumTimeout as timeout:
            await self.durable_through(entry.seq)
            raise WriteTimeout(timeout, delays) from None
        await self.durable_through(entry.seq)
        return WriteOutcome(entry, confirmations, delays)

    def start_write(self, op: str, key: str | None, value: Any = None) -> tuple[Entry, dict, asyncio.Future]:
        """Number, log, apply and schedule one operation now; return its entry, the delays drawn
        and the Future of its quorum (what :meth:`write` waits for)."""
        entry = self.core.number(op, key, value, time.time())
        record = encode_record(entry)
        self.log.append_record(record)  # numbered and appended in one go: the log is in seq order
        self.store.apply(entry)
        delays = self.core.append(entry, record_body(record), time.monotonic())
        quorum = self._quorum_waiters[entry.seq] = asyncio.get_running_loop().create_future()
        self._plan_step()
        return entry, delays, quorum

    def durable_through(self, seq: int) -> asyncio.Future:
        """Done once entries up to ``seq`` are durable in the leader's log (usually at once: the
        sync started when they were shipped)."""
        return self.log.sync_future(max(0, seq - self.replayed))

    # --- the core's decisions, carried out ---------------------------------------------------

    def _plan_step(self) -> None:
        """Ask the core what to do at the end of this loop iteration, so the writes of one
        iteration share a request."""
        if not self._step_planned:
            self._step_planned = True
            asyncio.get_running_loop().call_soon(self._step)

    def _step(self) -> None:
        self._step_planned = False
        if self._closed:
            return
        now = time.monotonic()
        ready = self.core.ready(now)
        for timeout in ready.timed_out:
            self._resolve(timeout.seq, error=timeout)
        if ready.sends:
            self.log.start_sync()
        for batch in ready.sends:
            try:
                self._send(batch)
            except Exception as exc:  # noqa: BLE001 - the channel must not stay "out" forever
                log.exception("sending to %s failed", batch.address)
                self.core.failed(batch.address, f"{type(exc).__name__}: {exc}", now)
        self._wakeup.arm(self.core.next_deadline())

    def _push_header(self) -> bytes:
        """What every push carries besides its entries: the term, who leads it, the history of
        the log the entries belong to, and how far the write quorum holds it."""
        history = self.host.state.history if self.host is not None else ((self.term, 1, self.config.node_id),)
        return codec.dumps({"term": self.term, "leader_id": self.config.node_id,
                            "history": [list(item) for item in history], "committed": self.core.committed})[:-1]

    def _send(self, batch: Batch) -> None:
        body = self._push_header() + b',"entries":[' + b",".join(d.payload for d in batch.entries) + b"]}"
        request = peers.replicate_request(batch.address, body, self.config.replication_secret)
        self.client.fetch(request, raise_error=False).add_done_callback(
            lambda done: self._answered(batch.address, done))

    def _answered(self, address: str, done: asyncio.Future) -> None:
        """Hand a follower's answer (or its absence) to the core; whatever the answer holds,
        the channel's request is settled, so the channel never stays stuck."""
        if self._closed:
            return
        now = time.monotonic()
        try:
            self._settle(address, done, now)
        except Exception as exc:  # noqa: BLE001
            log.exception("answer from %s could not be read", address)
            self.core.failed(address, f"{type(exc).__name__}: {exc}", now)
        finally:
            self._plan_step()

    def _settle(self, address: str, done: asyncio.Future, now: float) -> None:
        error = done.exception()
        response: HTTPResponse | None = None if error is not None else done.result()
        if response is None:  # no HTTP answer: refused, reset, timed out
            self.core.failed(address, str(error), now)
            return
        if response.code < 599:  # an answer, whatever it says: the follower is in touch
            self.last_heard[address] = now
        if response.code == 200:
            try:
                answer = codec.loads(response.body)
                applied, node_id = int(answer["applied_seq"]), answer.get("node_id")
            except (ValueError, KeyError, TypeError, OverflowError):
                self.core.failed(address, f"unreadable confirmation {response.body[:200]!r}", now)
                return
            for seq, confirmations in self.core.answered(address, applied, node_id, now):
                self._resolve(seq, confirmations=confirmations)
            if self.host is not None:  # the commit point may have moved: a snapshot may be due,
                self.host.compactor.poke()  # a learner may have caught up
                self.host.check_learners()
        elif response.code == 409 and self._later_term(response.body):
            self.core.failed(address, f"HTTP 409: {response.body[:300]!r}", now)
        elif is_refusal(response.code):
            self.core.refused(address, f"HTTP {response.code}: {response.body[:300]!r}", now)
        else:
            self.core.failed(address, f"HTTP {response.code}: {(response.body or b'')[:200]!r}", now)

    def _later_term(self, body: bytes) -> bool:
        """A follower refused a push because it knows a later term: tell the node, which steps
        down (fencing). True if that is what the answer says."""
        try:
            answer = codec.loads(body)
            term = int(answer["term"])
        except (ValueError, KeyError, TypeError, OverflowError):
            return False
        if term <= self.term:
            return False
        if self.host is not None:
            self.host.heard_of_term(term, answer.get("leader_id"))
        return True

    def _resolve(self, seq: int, confirmations: int = 0, error: Exception | None = None) -> None:
        future = self._quorum_waiters.pop(seq, None)
        if future is None or future.done():
            return
        if error is None and not self._may_acknowledge():
            error = LeaseLost(seq, confirmations, self.config.write_quorum)
        if error is None:
            future.set_result(confirmations)
        else:
            future.set_exception(error)

    def _may_acknowledge(self) -> bool:
        """With a coordinator, only while the leader lease is valid by this node's clock: a
        leader cut off from etcd stops acknowledging before anyone else can take the key."""
        coordinator = self.host.coordinator if self.host is not None else None
        return coordinator is None or coordinator.may_acknowledge()

    # --- reads of the leader's state ---------------------------------------------------------

    def entries_between(self, after: int, upto: int | None, limit: int) -> list[Entry]:
        return self.core.entries_between(after, upto, limit)

    def note_follower_pull(self, node_id: str, after: int) -> bool:
        """Note a follower's pull; False if it needs a snapshot (what follows ``after`` is compacted).
        A learner pulls every CATCHUP_INTERVAL even when no write comes: the moment to see
        whether it caught up."""
        servable = self.core.pulled(node_id, after, self.config.address_of(node_id))
        if self.host is not None:
            self.host.check_learners()
        return servable

    def note_snapshot_fetch(self, node_id: str) -> None:
        """A follower fetches the snapshot: a learner until it pulls from the log again."""
        address = self.config.address_of(node_id)
        if address in self.core.progress:
            self.core.installing(address, True)

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
                "installing_snapshot": p.installing,
                "learner": p.learner,
            }
            for address, p in self.core.progress.items()
        }
        c = self.config
        return {
            "role": self.role, "node_id": c.node_id, "term": self.term, "last_seq": self.last_seq,
            "committed_seq": self.core.committed, "first_kept_seq": self.core.first_seq,
            "applied_seq": self.store.applied_seq, "keys": len(self.store),
            "write_quorum": c.write_quorum, "min_delay_ms": c.min_delay_ms, "max_delay_ms": c.max_delay_ms,
            "write_timeout_ms": c.write_timeout_ms, "delay_seed": c.delay_seed,
            "batch_linger_us": c.batch_linger_us, "fsync": c.fsync,
            "replications_in_flight": self.core.in_flight, "followers": followers,
        }

    # --- shutdown ----------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Let writes in progress get their answer before shutting down; those still waiting for
        their quorum after ``timeout`` are answered 503, outcome unknown (their entries stay in
        the log and replicate when the leader is back)."""
        if await self.writes.wait_idle(timeout):
            return
        log.warning("shutting down with %d writes still waiting for their quorum; they are answered 503 "
                    "(outcome unknown)", len(self._quorum_waiters))
        for seq in list(self._quorum_waiters):
            self._resolve(seq, error=LeaderStopping(seq, self.core.quorum.confirmations(seq), self.config.write_quorum))
        await self.writes.wait_idle(ANSWER_GRACE_S)

    def step_down(self, reason: str) -> None:
        """Stop leading at once: no more sends, and every write still waiting for its quorum is
        answered 503, outcome unknown (the log stays open: the node goes on as a follower)."""
        for seq in list(self._quorum_waiters):
            self._resolve(seq, error=LeaderSteppedDown(seq, self.core.quorum.confirmations(seq),
                                                       self.config.write_quorum, reason))
        self._stop()

    def _stop(self) -> None:
        self._closed = True
        self.background.cancel()
        self._wakeup.cancel()
        self.core.close()
        self.client.close()

    async def close(self) -> None:
        self._stop()
        if self.host is None:
            self.log.close()
