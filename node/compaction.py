"""Snapshots and log compaction on a serving node: wires ``node.core.compaction`` to the
snapshot files, the log file and the role's entries in memory.

A snapshot is taken at ``S = min(applied, committed)``: only committed entries, because an
applied one beyond the commit point may still be rolled back by a new leader, and a snapshot
cannot be rolled back. The live store may be ahead of ``S``, so the snapshot's state is not
copied from it: it is the previous snapshot with the entries up to ``S`` applied, computed in a
worker thread (the node goes on serving) from entries the role holds in memory anyway.

After the snapshot is durable:

- the role forgets the entries it no longer needs in memory: a follower everything up to
  ``S``; the leader everything before ``first_to_keep`` (what its slowest follower still
  lacks, at most ``RETAIN_ENTRIES`` back, so a short outage still heals from the log);
- the log is rewritten (``LogFile.compact``) to keep what the role keeps and everything after
  the *previous* snapshot, so that a damaged newest snapshot leaves an older one and the log
  after it to start from;
- snapshots older than the previous one are deleted.

    compactor = Compactor(node, snapshot)   # the newest valid snapshot found at start, or None
    compactor.poke()                        # the commit point moved: starts a snapshot when one is due
    await compactor.take("POST /admin/snapshot")
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from node import snapshot as snapshots
from node.core.compaction import first_to_keep, snapshot_due
from node.core.terms import term_at
from node.snapshot import Snapshot, SnapshotError
from node.store import State, build_state

log = logging.getLogger(__name__)

KEEP_SNAPSHOTS = 2  # the newest, and the one before it as the fallback


class SnapshotRefused(Exception):
    """A snapshot cannot be used (damaged, not newer, of another history); the message says why."""


def load_newest(data_dir: str) -> Snapshot | None:
    """The newest snapshot that reads back whole. A damaged newer one is skipped with a warning
    naming it (the log after the older one covers what it held)."""
    found, skipped = snapshots.newest_valid(data_dir)
    for reason in skipped:
        log.warning("%s; starting from an older snapshot", reason)
    if skipped and found is None:
        raise SnapshotError(f"{skipped[0]}; no older snapshot reads back either. Move the damaged file aside "
                            f"(e.g. mv it to {os.path.basename(snapshots.paths(data_dir)[0])}.damaged) and restart: a "
                            f"follower then fetches a snapshot from the leader")
    return found


class Compactor:
    def __init__(self, node, found: Snapshot | None) -> None:
        self.node = node
        self.config = node.config
        self.base_seq = found.seq if found else 0
        self.base_term = found.term if found else 0
        self.base_members = found.members if found else None  # None: the membership PEERS gives
        self.base_path = os.path.join(snapshots.directory_in(self.config.data_dir),
                                      snapshots.file_name(found.seq)) if found else None
        self.previous_seq = self._previous_seq()
        self._preloaded = found  # handed to the first store reset, then dropped
        self._task: asyncio.Task | None = None  # the automatic snapshot running, if any
        self._lock = asyncio.Lock()
        self.taken = 0
        self.installed_count = 0  # snapshots fetched from the leader
        self.last: dict | None = None
        self.last_error: str | None = None

    def _previous_seq(self) -> int:
        """The seq of the older snapshot kept as the fallback (0: none): the log keeps what follows it."""
        older = [int(os.path.basename(p)[len("snapshot-"):-len(snapshots.SUFFIX)]) for p in
                 snapshots.paths(self.config.data_dir)]
        older = [seq for seq in older if seq < self.base_seq]
        return max(older, default=0)

    # --- the state a store starts from -----------------------------------------------------

    def load_base(self) -> tuple[State, int] | None:
        """The base snapshot's state and seq, for ``Store.reset`` (read from its file: the node
        does not keep a second copy of its state in memory)."""
        found, self._preloaded = self._preloaded, None
        if found is None and self.base_path is not None:
            found = snapshots.read(self.base_path)
        return (found.data, found.seq) if found is not None else None

    # --- taking one --------------------------------------------------------------------------

    def snapshot_point(self) -> int:
        """The seq a snapshot taken now would be at: applied, and known committed."""
        role = self.node.role_obj
        committed = role.core.committed if role.role == "leader" else self.node.known_committed
        return min(self.node.store.applied_seq, committed)

    def poke(self) -> None:
        """Start a snapshot in the background when ``SNAPSHOT_EVERY`` committed entries have been
        applied since the last one (cheap: called when the commit point may move, after a
        follower's answer on the leader and after each durable batch on a follower)."""
        if self._task is None and not self._lock.locked() and \
                snapshot_due(self.snapshot_point(), self.base_seq, self.config.snapshot_every):
            self._task = asyncio.ensure_future(self._take_in_background())

    async def _take_in_background(self) -> None:
        try:
            await self.take("automatic")
        except Exception as exc:  # noqa: BLE001 - the node goes on; the next due point retries
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("snapshot failed; the log is left as it is")
        finally:
            self._task = None

    async def take(self, reason: str) -> dict:
        """Snapshot at the current point and compact; what was done. One at a time: a second
        caller waits for the running one, then snapshots what was committed since."""
        async with self._lock:
            return await self._take(reason)

    async def _take(self, reason: str) -> dict:
        started = time.monotonic()
        seq = self.snapshot_point()
        if seq <= self.base_seq:
            return {"taken": False, "seq": self.base_seq, "reason": f"nothing committed since the snapshot at seq "
                                                                    f"{self.base_seq}"}
        entries = self._entries_through(seq)
        history = tuple(item for item in self.node.state.history if item[1] <= seq)
        term = entries[-1].term if entries else term_at(history, seq)
        members = next((e.value["members"] for e in reversed(entries) if e.op == "members"), self.base_members)
        preloaded, self._preloaded = self._preloaded, None
        path, size = await asyncio.get_running_loop().run_in_executor(
            None, _build_and_write, self.config.data_dir, preloaded, self.base_path, entries, seq, term, history,
            members)
        if seq <= self.base_seq:  # a newer snapshot was installed from the leader meanwhile
            return {"taken": False, "seq": self.base_seq, "reason": f"a snapshot at seq {self.base_seq} was installed "
                                                                    f"while this one was written"}
        self._adopt(seq, term, path)
        self.base_members = members
        compacted = await self.compact()
        self.last_error = None
        self.taken += 1
        self.last = {"taken": True, "reason": reason, "seq": seq, "term": term, "path": path, "bytes": size,
                     "took_ms": round(1000 * (time.monotonic() - started), 1), "at": time.time(), **compacted}
        log.info("snapshot at seq %d (%s): %d bytes in %.0f ms; %d entries dropped from memory, log %d -> %d bytes",
                 seq, reason, size, self.last["took_ms"], compacted["entries_dropped"], compacted["log_bytes_before"],
                 compacted["log_bytes_after"])
        return self.last

    def _entries_through(self, seq: int) -> list:
        """The entries after the base snapshot up to ``seq``, from the role's memory."""
        role = self.node.role_obj
        if role.role == "leader":
            entries = [e for e in role.core.entries_from(self.base_seq + 1) if e.seq <= seq]
        else:
            held = role.core.held
            entries = [held[s] for s in range(self.base_seq + 1, seq + 1) if s in held]
        if len(entries) != seq - self.base_seq:
            raise RuntimeError(f"cannot snapshot at seq {seq}: the node holds {len(entries)} of the "
                               f"{seq - self.base_seq} entries after its snapshot at seq {self.base_seq}")
        return entries

    def _adopt(self, seq: int, term: int, path: str) -> None:
        """``path`` (durable) is the base from now on; the previous one is the fallback."""
        self.previous_seq, self.base_seq, self.base_term, self.base_path = self.base_seq, seq, term, path
        self._preloaded = None
        for doomed in snapshots.prune(self.config.data_dir, KEEP_SNAPSHOTS):
            log.info("deleted the old snapshot %s", doomed)

    async def compact(self) -> dict:
        """Drop from memory and from the log what the snapshots cover (see the module's doc)."""
        node, role = self.node, self.node.role_obj
        log_file = node.log
        if role.role == "leader":
            core = role.core
            matches = core.matches()
            keep = first_to_keep(self.base_seq, matches, set(matches), core.last_seq, self.config.retain_entries)
            kept = core.entries_from(min(keep, self.previous_seq + 1))
            mark = log_file.mark()
            dropped = core.compact(keep)
        else:
            kept = [e for e in role.core.stored_entries() if e.seq > self.previous_seq]
            mark = log_file.mark()
            dropped = role.core.compact(min(self.base_seq, node.store.applied_seq))
        before, after = await log_file.compact(mark, kept)
        return {"entries_dropped": dropped, "log_bytes_before": before, "log_bytes_after": after}

    # --- one installed from the leader ---------------------------------------------------------

    def installed(self, found: Snapshot, path: str) -> None:
        """A snapshot fetched from the leader is the base now; older ones and the log before it
        are superseded (the log is compacted by the caller)."""
        self.previous_seq = 0  # nothing before the leader's snapshot is kept: it may be another history
        self.installed_count += 1
        self.base_seq, self.base_term, self.base_path = found.seq, found.term, path
        self.base_members = found.members
        self._preloaded = None
        for doomed in snapshots.prune(self.config.data_dir, KEEP_SNAPSHOTS):
            log.info("deleted the old snapshot %s", doomed)

    def status(self) -> dict:
        return {"seq": self.base_seq, "term": self.base_term, "path": self.base_path, "every": self.config.snapshot_every,
                "retain_entries": self.config.retain_entries, "fallback_seq": self.previous_seq or None,
                "since": self.node.store.applied_seq - self.base_seq, "taken": self.taken,
                "installed": self.installed_count, "running": self._task is not None,
                "last": self.last, "last_error": self.last_error}


def _build_and_write(data_dir: str, preloaded: Snapshot | None, base_path: str | None, entries: list, seq: int,
                     term: int, history, members: list | None) -> tuple[str, int]:
    """The new snapshot's state from the previous one (read here, off the loop, unless it is
    still in memory from the start) and the entries after it, written durably (a worker
    thread's part of :meth:`Compactor.take`)."""
    base = preloaded or (snapshots.read(base_path) if base_path else None)
    found = Snapshot(seq=seq, term=term, history=history, data=build_state(base.data if base else {}, entries),
                     members=members)
    path = snapshots.write(data_dir, found)
    return path, os.path.getsize(path)
