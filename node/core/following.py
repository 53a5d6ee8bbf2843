"""The follower's rules: which arriving entries to store, when to apply them, when to pull.

Entries arrive out of order (each send has its own random delay). A follower therefore:

* stores an entry the moment it arrives and confirms it as soon as it is durable, without
  waiting for earlier entries (waiting would make every write as slow as the slowest of all
  delays in flight);
* applies entries to its visible state strictly in sequence order, so a reader only ever sees
  a state the leader really had (consistent prefix); an early entry waits for its predecessors;
* treats a second delivery of the same entry as a no-op that still confirms, and a different
  entry under a seq it holds as a conflict: the whole batch is refused, nothing changes;
* pulls what it lacks from the leader's ``/log``: everything at start, then on every tick the
  entries the leader already had one tick ago (:class:`CatchUp`), so a lost send or an outage
  heals without anyone's help while the simulated lag of normal sends is left alone.

    core = FollowerCore(Store())
    core.accept([(entry3, print3)])            # [0]: the positions of the new entries, to be stored
    core.durable([entry3])                     # now durable; applied once 1 and 2 are too
"""

from __future__ import annotations

from dataclasses import dataclass

from node.log import Entry, Fingerprints
from node.store import Store


class EntryConflict(Exception):
    """The leader sent a different entry under a sequence number this follower already holds."""


class FollowerCore:
    """``inflight``: stored, not yet durable; ``pending``: durable, waiting for a predecessor;
    ``held``: every durable entry, applied or not (what this node can give a new leader, and
    what it rebuilds its state from after a rollback); ``fingerprints``: of every entry held,
    applied or not (to tell a redelivery from a different entry under the same seq)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.held: dict[int, Entry] = {}
        self.pending: dict[int, Entry] = {}
        self.inflight: dict[int, Entry] = {}
        self.fingerprints = Fingerprints()
        self.received_max = 0
        self.leader_last_seq: int | None = None
        self.last_conflict: str | None = None

    @property
    def applied_seq(self) -> int:
        return self.store.applied_seq

    def replay(self, entries: list[tuple[Entry, int]]) -> None:
        """Rebuild from the log (arrival order) at start: every entry there is durable."""
        for entry, print_ in entries:
            self.fingerprints.set(entry.seq, print_)
            if not self._holds(entry.seq):
                self.held[entry.seq] = entry
                self.pending[entry.seq] = entry
                self.received_max = max(self.received_max, entry.seq)
        self._apply_ready()

    def accept(self, entries: list[tuple[Entry, int]]) -> list[int]:
        """Positions in ``entries`` (entry, fingerprint) that are new and must be stored; they
        count as in flight until :meth:`durable` or :meth:`not_durable`. Raises EntryConflict,
        before changing anything, if any differs from the entry held under its seq."""
        for entry, print_ in entries:
            self._check_no_conflict(entry.seq, print_)
        fresh = []
        for i, (entry, print_) in enumerate(entries):
            if not self._holds(entry.seq):
                self.fingerprints.set(entry.seq, print_)
                self.inflight[entry.seq] = entry
                self.received_max = max(self.received_max, entry.seq)
                fresh.append(i)
        return fresh

    def durable(self, entries: list[Entry]) -> None:
        """These stored entries are durable now: apply whatever became ready."""
        for entry in entries:
            if self.inflight.pop(entry.seq, None) is not None:
                self.held[entry.seq] = entry
                self.pending[entry.seq] = entry
        self._apply_ready()

    def not_durable(self, entries: list[Entry]) -> None:
        """Their write or sync failed: they are not held, so a later delivery stores them again."""
        for entry in entries:
            self.inflight.pop(entry.seq, None)
            self.fingerprints.set(entry.seq, 0)

    def leader_holds(self, last_seq: int, applied_when_asked: int) -> str | None:
        """Note the leader's last seq from a pull; a new conflict message if the leader holds
        less than this follower had applied when it asked (the leader lost or replaced its log).

        Compared with what was applied *when the pull was sent*, not now: entries pushed while
        the page travelled may be applied already, and the leader's answer could not count them.
        """
        self.leader_last_seq = last_seq
        if last_seq < applied_when_asked and self.last_conflict is None:
            self.last_conflict = (f"the leader holds {last_seq} entries but this follower applied "
                                  f"{applied_when_asked}: the leader lost or replaced its log")
            return self.last_conflict
        return None

    def held_terms(self) -> dict[int, int]:
        """seq -> term of every durable entry held."""
        return {seq: entry.term for seq, entry in self.held.items()}

    def roll_back(self, seqs: list[int]) -> list[Entry]:
        """Drop the held entries at ``seqs`` (not in the new leader's log) and return them; the
        state is rebuilt from what remains when one of them was applied already."""
        removed = [self.held.pop(seq) for seq in seqs if seq in self.held]
        for entry in removed:
            self.pending.pop(entry.seq, None)
            self.fingerprints.set(entry.seq, 0)
        if removed and min(entry.seq for entry in removed) <= self.store.applied_seq:
            self.store.reset()
            self.pending = dict(self.held)
            self._apply_ready()
        self.received_max = max(self.held, default=0)
        self.leader_last_seq = None
        return removed

    def compact(self, snapshot_seq: int) -> int:
        """Forget the held entries a snapshot at ``snapshot_seq`` holds (only applied ones: a
        snapshot is never ahead of the state); how many went."""
        if snapshot_seq > self.store.applied_seq:
            raise ValueError(f"a snapshot at seq {snapshot_seq} is ahead of the applied seq {self.store.applied_seq}")
        doomed = [seq for seq in self.held if seq <= snapshot_seq]
        for seq in doomed:
            del self.held[seq]
        self.fingerprints.forget_through(snapshot_seq)
        return len(doomed)

    def installed(self, snapshot_seq: int) -> None:
        """The store now holds the leader's snapshot at ``snapshot_seq`` (this follower was too
        far behind for the log): what it holds up to there is superseded, what it holds beyond
        applies on top, in order."""
        for seq in [s for s in self.held if s <= snapshot_seq]:
            del self.held[seq]
            self.pending.pop(seq, None)
        self.fingerprints.forget_through(snapshot_seq)
        self._apply_ready()

    def stored_entries(self) -> list[Entry]:
        """Every entry stored, durable or still being synced, in seq order: what a compacted
        log must keep."""
        return sorted([*self.held.values(), *self.inflight.values()], key=lambda e: e.seq)

    def beyond_applied(self) -> frozenset[int]:
        """Seqs held durably past a gap."""
        return frozenset(self.pending)

    def entries_in_order(self) -> list[Entry]:
        """Every held entry in seq order (a promoted follower's log)."""
        return [self.held[seq] for seq in sorted(self.held)]

    @property
    def lag(self) -> int:
        """What this follower knows the leader holds (pulled or pushed) and has not applied."""
        return max(self.leader_last_seq or 0, self.received_max) - self.store.applied_seq

    def _holds(self, seq: int) -> bool:
        return seq <= self.store.applied_seq or seq in self.pending or seq in self.inflight

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
        store, pending = self.store, self.pending
        while store.applied_seq + 1 in pending:
            store.apply(pending.pop(store.applied_seq + 1))


@dataclass(frozen=True)
class Pull:
    """Ask the leader for the entries after ``after`` (up to ``upto``; None: all it has)."""

    after: int
    upto: int | None


class CatchUp:
    """When to pull from the leader, and up to where.

    A round pulls page after page until the leader says there is no more; the first round
    (at start) pulls everything, every later round, ``interval_s`` after the previous one,
    only what the leader held when the previous round ended: entries younger than that are
    still on their way by push, with their simulated lag. A failed pull is retried at the
    next tick.

        catch_up = CatchUp(interval_s=2.0)
        catch_up.next_pull(now=0.0, applied_seq=0)     # Pull(after=0, upto=None)
        catch_up.page(leader_last=10, more=False, now=0.1)
        catch_up.next_pull(now=0.5, applied_seq=10)    # None: next round at 2.1
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.next_at = 0.0
        self.in_flight = False
        self.upto: int | None = None  # the leader's last seq at the end of the previous round
        self.last_error: str | None = None

    def next_pull(self, now: float, applied_seq: int) -> Pull | None:
        if self.in_flight or now < self.next_at:
            return None
        self.in_flight = True
        return Pull(applied_seq, self.upto)

    def page(self, leader_last: int, more: bool, now: float) -> bool:
        """A page arrived; True if the leader was unreachable until now."""
        self.in_flight = False
        recovered, self.last_error = self.last_error is not None, None
        if not more:
            self.upto = leader_last
            self.next_at = now + self.interval_s
        return recovered

    def retry_now(self) -> None:
        """The pull was answered with a later term: pull everything again at once, from the
        leader of that term."""
        self.in_flight = False
        self.upto = None
        self.next_at = 0.0

    def failed(self, error: str, now: float) -> bool:
        """A pull failed; True if it is the first failure in a row (worth one log line)."""
        self.in_flight = False
        first, self.last_error = self.last_error is None, error
        self.next_at = now + self.interval_s
        return first

    def next_deadline(self) -> float | None:
        return None if self.in_flight else self.next_at
