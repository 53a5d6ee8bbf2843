"""A follower: wires ``node.core.following`` to the log file and to pulls from the leader.

An arriving batch (``POST /replicate``, or a page pulled from the leader's ``/log``) is checked
by the core, its new entries are appended to the log in one write, and the answer waits until
they are durable (group commit: batches arriving during a sync share the next). The core then
applies whatever became ready, in sequence order. The catch-up loop asks the core when to pull
and up to where.

    follower = Follower(config, limits, log_file, entries)
    await follower.accept(entries)      # durable once this returns; raises EntryConflict
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from node import codec, peers
from node import snapshot as snapshots
from node.config import Config
from node.core.following import CatchUp, EntryConflict, FollowerCore
from node.limits import Limits
from node.log import Entry, LogFile, encode_record, record_fingerprint
from node.store import Store
from node.tasks import InFlight, TaskGroup

log = logging.getLogger(__name__)

__all__ = ["EntryConflict", "Follower", "ShuttingDown"]

PULL_LIMIT = 1000
INCOMING = "incoming.tmp"  # a snapshot being fetched, under DATA_DIR/snapshots/


class ShuttingDown(Exception):
    """The follower is stopping and takes no more entries; the leader retries them later."""


class Follower:
    role = "follower"

    def __init__(self, config: Config, limits: Limits, log_file: LogFile, entries: list[Entry],
                 host=None) -> None:
        """``host`` (the node, ``node.replica``) owns the terms: it says which leader to pull
        from and hears what the leader's answers say of its term and history."""
        self.config, self.limits, self.log = config, limits, log_file
        self.host = host
        self.store = host.store if host is not None else Store()
        self.store.reset()  # to the snapshot, if any: replay skips what it holds
        self.core = FollowerCore(self.store)
        self.core.replay([(entry, record_fingerprint(encode_record(entry))) for entry in entries])
        self.catch_up = CatchUp(config.catchup_interval_ms / 1000)
        self.client = peers.make_client()
        self.background = TaskGroup("catch-up")
        self.receiving = InFlight()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        if entries:
            log.info("replayed %d records from %s: applied up to seq %d, %d waiting for a gap",
                     len(entries), log_file.path, self.store.applied_seq, len(self.core.pending))

    def accept(self, entries: list[Entry]) -> asyncio.Future:
        """Store what is new in ``entries`` now; the Future is done once all of them are
        durable and whatever became ready is applied. Raises EntryConflict (before touching
        anything) if one of them differs from the entry held under its seq."""
        if self._stopping.is_set():
            raise ShuttingDown(f"follower {self.config.node_id} is shutting down; the leader retries the entries "
                               f"and the follower pulls what it missed when it is back")
        records = [encode_record(entry) for entry in entries]
        fresh = self.core.accept([(entry, record_fingerprint(record)) for entry, record in zip(entries, records)])
        stored = [entries[i] for i in fresh]
        try:
            self.log.append_records([records[i] for i in fresh])
        except BaseException:
            self.core.not_durable(stored)  # not written: a redelivery must store them, not count as a duplicate
            raise
        done = asyncio.get_running_loop().create_future()
        self.receiving.started()
        # Also covers duplicates whose first copy is still being synced.
        self.log.sync_future().add_done_callback(lambda synced: self._made_durable(stored, synced, done))
        return done

    def _made_durable(self, stored: list[Entry], synced: asyncio.Future, done: asyncio.Future) -> None:
        self.receiving.finished()
        error = synced.exception() if not synced.cancelled() else asyncio.CancelledError()
        if error is None:
            self.core.durable(stored)
            if self.host is not None:
                self.host.compactor.poke()
        else:
            self.core.not_durable(stored)
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    # --- catch-up ------------------------------------------------------------------------

    def start(self) -> None:
        self.background.spawn(self._catch_up_loop())

    async def _catch_up_loop(self) -> None:
        while not self._stopping.is_set():
            pull = self.catch_up.next_pull(time.monotonic(), self.store.applied_seq)
            if pull is None:
                await self._sleep_until(self.catch_up.next_deadline())
                continue
            try:
                await self._pull(pull.after, pull.upto)
            except ShuttingDown:
                return
            except Exception as exc:  # leader down or unreachable: try again next tick
                if self.catch_up.failed(f"{type(exc).__name__}: {exc}", time.monotonic()):
                    log.warning("cannot pull from leader %s: %s", self.leader_address or "(none known)", exc)

    async def _sleep_until(self, when: float) -> None:
        """Rest until ``when``, or until stopped or woken (a new leader to pull from)."""
        self._wake.clear()
        waits = [asyncio.ensure_future(self._stopping.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, timeout=max(0.0, when - time.monotonic()), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    @property
    def leader_address(self) -> str | None:
        return self.host.leader_address if self.host is not None else None

    async def _pull(self, after: int, upto: int | None) -> None:
        """Fetch one page of entries after ``after`` (up to ``upto``) and store it. Without a
        known leader, ask the peers who leads first."""
        if self.leader_address is None:
            await self.host.discover_leader(self.client)
        leader = self.leader_address
        if leader is None:
            raise LookupError("no leader known: no peer answered /health as the leader of this term or a later one")
        term = self.host.state.term
        request = peers.log_request(leader, self.config.replication_secret, after=after,
                                    upto=upto, limit=PULL_LIMIT, node_id=self.config.node_id, term=term)
        response = await self.client.fetch(request, raise_error=False)
        if response.code == 409:  # a stale term on one side: whoever is behind learns the other's
            answer = codec.loads(response.body)
            if int(answer["term"]) > term:  # this node was behind: follow, and pull again at once
                await self.host.heard_of_term_async(int(answer["term"]), answer.get("leader_id"))
                self.catch_up.retry_now()
                return
            raise LookupError(f"the leader at {leader} answered 409: {answer.get('error')}")
        response.rethrow()
        answer = codec.loads(response.body)
        await self.host.heard_from_leader(int(answer["term"]), answer["leader_id"], answer["history"],
                                          int(answer.get("committed", 0)))
        if answer.get("snapshot"):  # what follows `after` was compacted away on the leader
            await self._install_snapshot(leader, answer["snapshot"])
            self.catch_up.page(int(answer["last_seq"]), True, time.monotonic())  # pull again at once
            return
        entries = [Entry.from_dict(item) for item in answer["entries"]]
        if entries:
            log.info("pulled %d entries from the leader (seq %d..%d)", len(entries), entries[0].seq, entries[-1].seq)
        await self.accept(entries)
        conflict = self.core.leader_holds(int(answer["last_seq"]), after)
        if conflict:
            log.error("%s", conflict)
        if self.catch_up.page(int(answer["last_seq"]), bool(answer.get("more")), time.monotonic()):
            log.info("leader %s reachable again", leader)

    async def _install_snapshot(self, leader: str, offered: dict) -> None:
        """Fetch the leader's snapshot (streamed to a temporary file in bounded chunks) and hand
        it to the node, which checks and installs it atomically. A transfer cut in the middle
        leaves this follower as it was; the next pull retries."""
        directory = snapshots.directory_in(self.config.data_dir)
        os.makedirs(directory, exist_ok=True)
        temporary = os.path.join(directory, INCOMING)
        log.warning("the leader compacted the entries after seq %d away; fetching its snapshot at seq %s (%s bytes)",
                    self.store.applied_seq, offered.get("seq"), offered.get("bytes"))
        started = time.monotonic()
        try:
            with open(temporary, "wb") as f:
                response = await self.client.fetch(
                    peers.snapshot_request(leader, self.config.replication_secret, self.config.node_id, f.write),
                    raise_error=False)
            if response.code != 200:
                raise LookupError(f"the leader at {leader} answered {response.code} to GET /snapshot")
            installed = await self.host.install_snapshot(temporary)
        finally:
            if os.path.exists(temporary):  # not installed: nothing of it stays
                os.remove(temporary)
        log.warning("installed the leader's snapshot at seq %d in %.2f s; pulling the entries after it",
                    installed, time.monotonic() - started)

    def restart_catch_up(self) -> None:
        """Pull everything the (new) leader has at the next tick: after a change of leader or a
        rollback, nothing pushed so far says what is missing."""
        self.catch_up.upto = None
        self.catch_up.next_at = 0.0
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def status(self) -> dict:
        core = self.core
        return {
            "role": self.role, "node_id": self.config.node_id, "leader": self.leader_address,
            "applied_seq": self.store.applied_seq, "received_seq": core.received_max,
            "waiting_for_gap": len(core.pending), "first_waiting": sorted(core.pending)[:20],
            "leader_last_seq": core.leader_last_seq, "lag": core.lag, "keys": len(self.store),
            "fsync": self.config.fsync, "last_pull_error": self.catch_up.last_error,
            "last_conflict": core.last_conflict,
        }

    async def drain(self, timeout: float) -> None:
        """Let entries being made durable get their confirmation out before shutting down."""
        self._stopping.set()
        await self.receiving.wait_idle(timeout)

    async def stop(self) -> None:
        """Stop pulling (the node leads from now on, or shuts down); the log stays open."""
        self._stopping.set()
        await self.background.cancel_all()
        self.client.close()

    async def close(self) -> None:
        await self.stop()
        if self.host is None:
            self.log.close()
