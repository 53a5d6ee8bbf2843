"""The leader's rules: number each write, keep the entries, schedule them for every follower,
and decide when each write is acknowledged or timed out.

Events in, decisions out (as etcd's raft's ``Step`` and ``Ready``):

- :meth:`LeaderCore.append` numbers a new entry and draws its delay to each follower;
- :meth:`LeaderCore.answered` / :meth:`failed` / :meth:`refused` report a request's fate,
  ``answered`` returning the writes it completed;
- :meth:`LeaderCore.ready` at time ``now`` returns the requests to send and the writes that
  timed out; :meth:`next_deadline` says when to call it again if nothing else happens.

    core = LeaderCore(["f1:8000"], quorum=1, timeout_ms=1000, min_delay_ms=0, max_delay_ms=0)
    entry = core.number("set", "k", 1, ts=0.0)
    core.append(entry, payload=b"...", now=0.0)     # {"f1:8000": 0.0}: the delay drawn
    ready = core.ready(now=0.0)                      # ready.sends: [Batch(f1:8000, [1])]
    core.answered("f1:8000", applied_seq=1, node_id="f1", now=0.001)   # [(1, 1)]: acknowledged
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from node.core.compaction import needs_snapshot
from node.core.progress import FollowerProgress
from node.core.quorum import QuorumTimeout, WriteQuorum
from node.core.shipping import Batch, FollowerChannel
from node.log import Entry


# A follower that installed a snapshot counts towards W again once a pull finds it this close
# to the last entry (the same bound as a learner's).
CAUGHT_UP_LAG = 100


class LeaderLogError(Exception):
    """The leader's own log is not a gap-free sequence from its snapshot (or from 1) on."""


@dataclass
class Ready:
    """What the leader must do now: send these requests, fail these writes."""

    sends: list[Batch] = field(default_factory=list)
    timed_out: list[QuorumTimeout] = field(default_factory=list)


def is_refusal(status: int) -> bool:
    """A 4xx answer is the follower's verdict on the entries (no retry), except 408 and 429,
    which only say "not now"."""
    return 400 <= status < 500 and status not in (408, 429)


class LeaderCore:
    """Numbering, the entries kept (``entries[i].seq == first_seq + i``), one channel per
    follower, the quorum.

    A snapshot at ``base_seq`` holds everything up to it, so the entries kept start at most
    one after it (earlier, for followers that lag: see :meth:`compact`); without a snapshot
    they start at 1. Delays are drawn from ``rng`` (seeded by ``DELAY_SEED`` for repeatable
    studies): one draw per follower per entry, in the order of ``followers``.
    """

    def __init__(self, followers: list[str], quorum: int, timeout_ms: int, min_delay_ms: float,
                 max_delay_ms: float, linger_us: int = 0, max_batch_bytes: int = 1 << 20,
                 rng: random.Random | None = None, entries: list[Entry] = (), term: int = 1,
                 base_seq: int = 0) -> None:
        self.term = term
        self.entries: list[Entry] = list(entries)
        self.base_seq = base_seq
        self.first_seq = self.entries[0].seq if self.entries else base_seq + 1
        if self.first_seq > base_seq + 1:
            raise LeaderLogError(f"starts at seq {self.first_seq}, but the snapshot holds only up to seq {base_seq}; "
                                 f"a leader log must hold every entry after its snapshot")
        for i, entry in enumerate(self.entries):
            if entry.seq != self.first_seq + i:
                raise LeaderLogError(f"jumps from seq {self.first_seq + i - 1} to {entry.seq}; "
                                     f"a leader log must hold every entry in order")
        self.min_delay_ms, self.max_delay_ms = min_delay_ms, max_delay_ms
        self.rng = rng or random.Random()
        self._max_batch_bytes, self._linger_s = max_batch_bytes, linger_us / 1e6
        self.progress = {address: FollowerProgress(address) for address in followers}
        self.channels = {address: FollowerChannel(p, max_batch_bytes, linger_us / 1e6)
                         for address, p in self.progress.items()}
        self.quorum = WriteQuorum(quorum, timeout_ms)

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.entries) - 1

    def entries_from(self, seq: int) -> list[Entry]:
        """The entries kept from ``seq`` on (a snapshot being built reads these)."""
        return self.entries[max(0, seq - self.first_seq):]

    def compact(self, keep_from: int) -> int:
        """Forget the entries before ``keep_from`` (a snapshot holds them); how many went."""
        drop = max(0, min(keep_from, self.last_seq + 1) - self.first_seq)
        if drop:
            del self.entries[:drop]
            self.first_seq += drop
        return drop

    def matches(self) -> dict[str, int]:
        """Each follower's confirmed prefix, by address (what compaction must keep for them)."""
        return {address: p.match for address, p in self.progress.items()}

    def installing(self, address: str, yes: bool) -> None:
        """A follower installs a snapshot: its confirmations count towards no write quorum
        until a pull finds it within ``CAUGHT_UP_LAG`` of the last entry (see :meth:`pulled`)."""
        self.progress[address].installing = yes

    @property
    def in_flight(self) -> int:
        """Entries some follower has not confirmed or been given up on yet."""
        return sum(len(channel) for channel in self.channels.values())

    def number(self, op: str, key: str | None, value: Any, ts: float) -> Entry:
        """The next entry: numbered after the last one, gap-free, in this leader's term."""
        return Entry(seq=self.last_seq + 1, op=op, key=key, value=value, ts=ts, term=self.term)

    def append(self, entry: Entry, payload: Any, now: float) -> dict[str, float]:
        """Take ``entry`` (from :meth:`number`, already in the leader's log) and schedule its
        ``payload`` for every follower; return the delay (ms) drawn for each."""
        if entry.seq != self.last_seq + 1:
            raise ValueError(f"entry seq {entry.seq} appended after {self.last_seq}")
        self.entries.append(entry)
        self.quorum.expect(entry.seq, now)
        delays = {}
        uniform, low, high = self.rng.uniform, self.min_delay_ms, self.max_delay_ms
        for address, channel in self.channels.items():
            delay = uniform(low, high)
            delays[address] = round(delay, 3)
            channel.push(entry.seq, payload, now + delay / 1000)
        return delays

    def set_followers(self, followers: list[str], learners: set[str]) -> None:
        """The membership changed: a channel for each new follower, none for a removed one
        (sends to it stop), and learners (by address) confirm nothing towards the quorum."""
        for address in [a for a in self.progress if a not in followers]:
            self.channels.pop(address).close()
            del self.progress[address]
        for address in followers:
            if address not in self.progress:
                progress = self.progress[address] = FollowerProgress(address)
                self.channels[address] = FollowerChannel(progress, self._max_batch_bytes, self._linger_s)
            self.progress[address].learner = address in learners

    @property
    def committed(self) -> int:
        """The highest seq up to which W followers hold every entry (etcd's commit rule: sort the
        followers' confirmed prefixes, read the W-th). Any promotion keeps all of these. Only
        full followers count: a learner's copy is not one a promotion asks for."""
        matches = sorted((p.match for p in self.progress.values() if not (p.learner or p.installing)), reverse=True)
        counted = matches[self.quorum.quorum - 1] if len(matches) >= self.quorum.quorum else 0
        return max(counted, self.base_seq)  # a snapshot holds only committed entries

    def ready(self, now: float) -> Ready:
        ready = Ready(timed_out=self.quorum.expire(now))
        for channel in self.channels.values():
            batch = channel.poll(now)
            if batch is not None:
                ready.sends.append(batch)
        return ready

    def next_deadline(self) -> float | None:
        times = [t for t in (c.next_deadline() for c in self.channels.values()) if t is not None]
        quorum_deadline = self.quorum.next_deadline()
        if quorum_deadline is not None:
            times.append(quorum_deadline)
        return min(times) if times else None

    def answered(self, address: str, applied_seq: int, node_id: str | None, now: float) -> list[tuple[int, int]]:
        """The follower at ``address`` confirmed its request; the writes this acknowledged, as
        (seq, confirmations).

        Only the entries the request carried count, each sent after its own drawn delay. An
        entry the follower got otherwise (a catch-up pull, which may take entries whose delay
        has not run out) does not: the study's delays would stop being real. It is sent again
        when due, confirmed as a duplicate, and counts then.
        """
        if address not in self.channels:  # removed from the membership while the request was out
            return []
        return self._confirm(address, self.channels[address].answered(applied_seq, node_id, now))

    def failed(self, address: str, error: str, now: float) -> None:
        if address in self.channels:
            self.channels[address].failed(error, now)

    def refused(self, address: str, error: str, now: float) -> None:
        if address in self.channels:
            self.channels[address].refused(error, now)

    def pulled(self, node_id: str, after: int, address: str | None = None) -> bool:
        """A follower asked for the entries after ``after``: it holds everything up to it (its
        progress, for ``/status``; not a confirmation, see :meth:`answered`). False if what it
        needs next was compacted away: it must install a snapshot first."""
        servable = not needs_snapshot(after + 1, self.first_seq)
        for known, progress in self.progress.items():
            if progress.node_id == node_id or known == address:
                progress.reported_applied(after)
                if servable and self.last_seq - after <= CAUGHT_UP_LAG:
                    progress.installing = False  # caught up from the log after its snapshot: it counts again
        return servable

    def _confirm(self, address: str, seqs: list[int]) -> list[tuple[int, int]]:
        if self.progress[address].installing or self.progress[address].learner:
            return []
        acknowledged = []
        for seq in seqs:
            confirmations = self.quorum.confirm(seq, address)
            if confirmations is not None:
                acknowledged.append((seq, confirmations))
        return acknowledged

    def entries_between(self, after: int, upto: int | None, limit: int) -> list[Entry]:
        """Entries with ``after < seq <= upto`` (``upto`` defaults to the last), at most ``limit``,
        of those kept (a caller asking for compacted ones checks :func:`needs_snapshot` first)."""
        start = max(after + 1, self.first_seq) - self.first_seq
        end = (self.last_seq if upto is None else min(upto, self.last_seq)) - self.first_seq + 1
        return self.entries[start:max(start, min(end, start + limit))]

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
