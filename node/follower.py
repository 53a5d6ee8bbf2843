"""A follower: stores every entry the leader sends, durably, and applies them in order.

Entries arrive out of order (each send has its own random delay). A follower therefore:

* appends an entry to its log the moment it arrives and confirms as soon as the entry is
  durable, without waiting for earlier entries (waiting would make every write as slow as the
  slowest of all delays in flight);
* applies entries to its visible state strictly in sequence order, so a reader only ever sees
  a state the leader really had (consistent prefix); an early entry waits for its predecessors;
* treats a second delivery of the same entry as a no-op that still confirms;
* pulls what it lacks from the leader's ``/log``: at start, and on every tick for entries the
  leader already had one tick ago (so a lost send or an outage heals without anyone's help,
  while the simulated lag of normal sends is left alone).
"""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import urlencode

from node.config import Config
from node.limits import LOG_PAGE_BYTES, REPLICATE_BODY_FACTOR
from node.log import Entry, Fingerprints, LogFile, encode_record, fingerprint, record_fingerprint
from node.replication import SECRET_HEADER, make_http_client
from node.store import Store
from node.tasks import InFlight, TaskGroup

log = logging.getLogger(__name__)

PULL_LIMIT = 1000


class EntryConflict(Exception):
    """The leader sent a different entry under a sequence number this follower already holds."""


class ShuttingDown(Exception):
    """The follower is stopping and takes no more entries; the leader retries them later."""


class Follower:
    role = "follower"

    def __init__(self, config: Config, log_file: LogFile, entries: list[Entry]) -> None:
        self.config = config
        self.log = log_file
        self.store = Store()
        self.pending: dict[int, Entry] = {}  # durable, waiting for a predecessor
        self.inflight: dict[int, Entry] = {}  # appended, not yet durable
        self.received_max = 0
        self.leader_last_seq: int | None = None
        self.last_pull_error: str | None = None
        # A /log page holds at most LOG_PAGE_BYTES plus one entry, and one entry can be larger
        # than a request body (see REPLICATE_BODY_FACTOR).
        self.client = make_http_client(max_body_size=LOG_PAGE_BYTES + (REPLICATE_BODY_FACTOR + 1) * config.max_body_bytes)
        self.background = TaskGroup("catch-up")
        self._stopping = asyncio.Event()
        self.receiving = InFlight()
        self.fingerprints = Fingerprints()
        self.last_conflict: str | None = None
        for entry in entries:  # the log is in arrival order; replay sorts it out
            self.fingerprints.set(entry.seq, fingerprint(entry))
            if not self._holds(entry.seq):
                self.pending[entry.seq] = entry
                self.received_max = max(self.received_max, entry.seq)
        self._apply_ready()
        if entries:
            log.info("replayed %d records from %s: applied up to seq %d, %d waiting for a gap",
                     len(entries), log_file.path, self.store.applied_seq, len(self.pending))

    def _holds(self, seq: int) -> bool:
        return seq <= self.store.applied_seq or seq in self.pending or seq in self.inflight

    async def receive(self, entry: Entry) -> None:
        """Make ``entry`` durable (once, however often it arrives) and apply what is ready."""
        await self.accept([entry])

    async def receive_batch(self, entries: list[Entry]) -> None:
        await self.accept(entries)

    def accept(self, entries: list[Entry]) -> asyncio.Future:
        """Append what is new in ``entries`` now; the Future is done once all of them are
        durable and whatever became ready is applied. Raises EntryConflict (before touching
        anything) if one of them differs from the entry held under its seq.

        Callback-driven, no task per batch: this is the follower's whole hot path.
        """
        if self._stopping.is_set():
            raise ShuttingDown(f"follower {self.config.node_id} is shutting down; the leader retries the entries "
                               f"and the follower pulls what it missed when it is back")
        records = [encode_record(entry) for entry in entries]
        prints = [record_fingerprint(record) for record in records]
        for entry, print_ in zip(entries, prints):  # all first: a conflict must not leave half a batch
            self._check_no_conflict(entry.seq, print_)
        fresh, fresh_records = [], []
        for entry, record, print_ in zip(entries, records, prints):
            if not self._holds(entry.seq):
                self.fingerprints.set(entry.seq, print_)
                self.inflight[entry.seq] = entry
                self.received_max = max(self.received_max, entry.seq)
                fresh.append(entry)
                fresh_records.append(record)
        self.log.append_records(fresh_records)
        self.receiving.started()
        done = asyncio.get_running_loop().create_future()
        # Also covers duplicates whose first copy is still being synced.
        self.log.sync_future().add_done_callback(lambda synced: self._made_durable(fresh, synced, done))
        return done

    def _made_durable(self, fresh: list[Entry], synced: asyncio.Future, done: asyncio.Future) -> None:
        self.receiving.finished()
        error = synced.exception() if not synced.cancelled() else asyncio.CancelledError()
        if error is not None:
            for entry in fresh:  # not known durable: a later delivery appends it again
                self.inflight.pop(entry.seq, None)
            if not done.done():
                done.set_exception(error)
            return
        for entry in fresh:
            if self.inflight.pop(entry.seq, None) is not None:
                self.pending[entry.seq] = entry
        self._apply_ready()
        if not done.done():
            done.set_result(None)

    def _check_no_conflict(self, seq: int, print_: int) -> None:
        held = self.fingerprints.get(seq)
        if held and held != print_:
            self.last_conflict = (
                f"seq {seq}: the leader sent an entry that differs from the one this follower holds; "
                f"the leader's log was replaced (e.g. restarted on an empty DATA_DIR). This follower keeps "
                f"its data and refuses the new history: restore the leader's log, or reset this follower's DATA_DIR"
            )
            raise EntryConflict(self.last_conflict)

    def _apply_ready(self) -> None:
        while self.store.applied_seq + 1 in self.pending:
            self.store.apply(self.pending.pop(self.store.applied_seq + 1))

    # --- catch-up -------------------------------------------------------------------------

    def start(self) -> None:
        self.background.spawn(self._catch_up_loop())

    async def _catch_up_loop(self) -> None:
        """Pull everything once at start, then each tick what the leader had a tick ago."""
        upto: int | None = None
        interval = self.config.catchup_interval_ms / 1000
        while not self._stopping.is_set():
            try:
                leader_last = await self.pull(upto)
                upto = leader_last
            except ShuttingDown:
                return
            except Exception as exc:  # leader down or unreachable: try again next tick
                if self.last_pull_error is None:
                    log.warning("cannot pull from leader %s: %s", self.config.leader, exc)
                self.last_pull_error = f"{type(exc).__name__}: {exc}"
            try:
                await asyncio.wait_for(self._stopping.wait(), interval)
            except asyncio.TimeoutError:
                pass

    async def pull(self, upto: int | None = None) -> int:
        """Fetch and store entries after our applied seq (up to ``upto``); return the leader's last seq."""
        while True:
            params = {"after": self.store.applied_seq, "limit": PULL_LIMIT, "node_id": self.config.node_id}
            if upto is not None:
                params["upto"] = upto
            response = await self.client.fetch(
                f"http://{self.config.leader}/log?{urlencode(params)}",
                headers={SECRET_HEADER: self.config.replication_secret},
                request_timeout=30,
            )
            answer = json.loads(response.body)
            entries = [Entry.from_dict(item) for item in answer["entries"]]
            if entries:
                log.info("pulled %d entries from the leader (seq %d..%d)", len(entries), entries[0].seq, entries[-1].seq)
            await self.receive_batch(entries)
            if self.last_pull_error is not None:
                log.info("leader %s reachable again", self.config.leader)
                self.last_pull_error = None
            self.leader_last_seq = int(answer["last_seq"])
            if self.leader_last_seq < self.store.applied_seq and self.last_conflict is None:
                self.last_conflict = (
                    f"the leader holds {self.leader_last_seq} entries but this follower applied "
                    f"{self.store.applied_seq}: the leader lost or replaced its log"
                )
                log.error("%s", self.last_conflict)
            if not answer.get("more"):
                return self.leader_last_seq

    def status(self) -> dict:
        return {
            "role": self.role,
            "node_id": self.config.node_id,
            "leader": self.config.leader,
            "applied_seq": self.store.applied_seq,
            "received_seq": self.received_max,
            "waiting_for_gap": len(self.pending),
            "first_waiting": sorted(self.pending)[:20],
            "leader_last_seq": self.leader_last_seq,
            # What this follower knows the leader holds (pulled or pushed) and has not applied yet.
            "lag": max(self.leader_last_seq or 0, self.received_max) - self.store.applied_seq,
            "keys": len(self.store.keys()),
            "fsync": self.config.fsync,
            "last_pull_error": self.last_pull_error,
            "last_conflict": self.last_conflict,
        }

    async def drain(self, timeout: float) -> None:
        """Let entries being made durable get their confirmation out before shutting down."""
        self._stopping.set()
        await self.receiving.wait_idle(timeout)

    async def close(self) -> None:
        self._stopping.set()
        await self.background.cancel_all()
        self.client.close()
        self.log.close()
