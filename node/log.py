"""The replication log: an append-only file of checksummed entries, one per line.

File layout (format version 2)::

    #kvlog 2\\n                                          header: format name and version
    3a1f09c2 {"key":"x","op":"set","seq":7,"term":2,...}\\n   CRC-32 of the JSON bytes, a space, the JSON

Version 2 records carry the term of the leader that assigned the entry's seq; version 1 records
(``#kvlog 1``, written by builds that predate terms) have no term. A node that opens a version 1
log reads its records as term 1 and rewrites the file as version 2 before it appends anything,
through a temporary file renamed over the old one, so a crash leaves one whole file or the
other. A version this build does not know (a newer build's) is refused rather than guessed at.

The leader's log holds entries in sequence order. A follower's log holds them in the order
they *arrived* (each send has its own random delay, so arrival order is not sequence order);
every record carries its sequence number, so the state is rebuilt by sorting on replay.

Crash safety: a record is written with one ``write()`` and made durable by ``fsync``. A crash
mid-write leaves at most one torn record at the end of the file; replay drops it with a
warning and truncates it away (the entry is fetched again from the leader). A bad record
anywhere else is real damage: replay stops with :class:`LogCorruptError` naming file and
offset, because serving from a log with a hole in its middle would silently lose writes.

Durability is a policy (``FSYNC``): ``always`` syncs for every waiter, ``batch`` lets every
entry that arrived while a sync was running share the next one (group commit), ``off`` leaves
it to the OS. A batch's fsync runs on the event loop while the disk answers within
``INLINE_SYNC_MAX_S`` (cheaper than a thread hand-off) and moves to a thread of its own as soon
as it gets slower, so the loop never waits long on the disk; ``always`` syncs in that thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import time
import zlib
from array import array
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from node import codec

log = logging.getLogger(__name__)

VERSION = 2  # the format this build writes
READS_VERSIONS = (1, 2)  # the formats it reads; 1 is upgraded on open
HEADER_PREFIX = b"#kvlog "
HEADER = HEADER_PREFIX + b"%d\n" % VERSION
# "noop" changes no key: a new leader's term-start entry, or a seq nobody held at a failover.
# "members" changes no key either: it carries the cluster's membership from its seq on.
OPS = ("set", "delete", "clear", "noop", "members")
LOG_FILE_NAME = "replication.log"
HEADER_PEEK_BYTES = 64  # enough for any header line this build writes or recognises
UPGRADE_SUFFIX = ".upgrade"  # the converted log is written here, then renamed over the old one
COMPACT_SUFFIX = ".compact"  # the compacted log is written here, then renamed over the old one
# Group-commit fsyncs run on the event loop while they average less than this, else in the
# sync thread: a quick fsync costs less than handing it to a thread and back.
INLINE_SYNC_MAX_S = 0.002


class LogCorruptError(Exception):
    """A record in the middle of a log fails its checksum or cannot be parsed, or the file is
    not a kvlog file at all."""

    def __init__(self, path: str, offset: int, reason: str, message: str | None = None):
        self.path, self.offset, self.reason = path, offset, reason
        super().__init__(message or (
            f"log {path} is damaged at byte offset {offset}: {reason}. The node will not serve "
            f"from a damaged log; move the file aside (e.g. mv {path} {path}.damaged) and restart: "
            f"a follower then fetches every entry again from the leader"
        ))


class LogVersionError(LogCorruptError):
    """A log in a format version this build does not read, most likely written by a newer build.

    A subclass of LogCorruptError so that everything refusing a damaged log refuses this too,
    with advice that fits: the file is not damaged, this build is too old for it.
    """

    def __init__(self, path: str, seen: str):
        self.seen = seen
        reads = ", ".join(str(v) for v in READS_VERSIONS)
        super().__init__(path, 0, f"format version {seen} is not one this build reads ({reads})", (
            f"log {path} is in kvlog format version {seen}; this build reads versions {reads}. Start the "
            f"node with the build that wrote it, or move the file aside (e.g. mv {path} {path}.v{seen}) "
            f"and restart: a follower then fetches every entry again from the leader"
        ))


class EntryError(ValueError):
    """An entry received over the network is malformed."""


@dataclass(frozen=True)
class Entry:
    """One replicated operation. ``seq`` orders it; ``ts`` is informational only; ``term`` is
    the term of the leader that assigned ``seq`` (last, with a default, so that entries built
    by position before terms existed still build, as term 1)."""

    seq: int
    op: str
    key: str | None
    value: Any
    ts: float
    term: int = 1

    def to_dict(self) -> dict:
        return {"seq": self.seq, "op": self.op, "key": self.key, "value": self.value, "ts": self.ts,
                "term": self.term}

    @classmethod
    def from_dict(cls, data: Any) -> Entry:
        """Build an entry from untrusted JSON, rejecting anything malformed."""
        if not isinstance(data, dict):
            raise EntryError("an entry must be a JSON object")
        missing = {"seq", "op", "key", "value", "ts"} - data.keys()
        if missing:
            raise EntryError(f"entry lacks field(s): {', '.join(sorted(missing))}")
        seq, op, key, ts = data["seq"], data["op"], data["key"], data["ts"]
        if type(seq) is not int or seq < 1:
            raise EntryError(f"entry seq must be an integer >= 1, got {seq!r}")
        if op not in OPS:
            raise EntryError(f"entry op must be one of {', '.join(OPS)}, got {op!r}")
        if op in ("set", "delete") and (not isinstance(key, str) or not key):
            raise EntryError(f"entry key must be a non-empty string for op {op!r}")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool):
            raise EntryError(f"entry ts must be a number, got {ts!r}")
        if op == "members":
            _check_members(data["value"])
        term = data.get("term", 1)  # absent: sent by a node that predates terms
        if type(term) is not int or term < 1:
            raise EntryError(f"entry term must be an integer >= 1, got {term!r}")
        return cls(seq=seq, op=op, key=key, value=data["value"], ts=float(ts), term=term)


def _check_members(value: Any) -> None:
    from node.core.membership import Membership, MembershipError

    try:
        Membership.from_json(value.get("members") if isinstance(value, dict) else None)
    except MembershipError as exc:
        raise EntryError(f"a members entry's value is {{\"members\": [...]}}: {exc}") from None


def _canonical(entry: Entry) -> bytes:
    return codec.dumps_sorted(entry.to_dict())


def encode_record(entry: Entry) -> bytes:
    body = _canonical(entry)
    return b"%08x %s\n" % (zlib.crc32(body), body)


def record_body(record: bytes) -> bytes:
    """The JSON of an encoded record: what the leader sends, so each entry is encoded once."""
    return record[9:-1]


def record_fingerprint(record: bytes) -> int:
    """A non-zero 32-bit digest of an encoded record (its checksum), to tell a redelivery
    from a different entry under the same seq (a different term makes a different entry)."""
    return int(record[:8], 16) % 0xFFFFFFFF + 1


def fingerprint(entry: Entry) -> int:
    return record_fingerprint(encode_record(entry))


class Fingerprints:
    """seq -> fingerprint of the entry held under it, in 4 bytes per entry.

    A follower keeps these for every entry it holds, applied or not, so an entry that arrives
    again under a known seq is either a harmless duplicate or a sign that the leader's history
    was replaced (for example a leader restarted on an empty DATA_DIR numbering from 1 again).
    """

    DENSE_GROWTH = 1 << 16  # beyond this jump ahead, keep the seq in a dict instead

    def __init__(self) -> None:
        self._dense = array("I")  # _dense[i] is seq _first + i
        self._first = 1
        self._sparse: dict[int, int] = {}

    def get(self, seq: int) -> int:
        i = seq - self._first
        held = self._dense[i] if 0 <= i < len(self._dense) else 0
        return held or self._sparse.get(seq, 0)

    def set(self, seq: int, value: int) -> None:
        if seq < self._first:
            return  # forgotten: a snapshot holds it, and nothing below it is compared again
        missing = seq - self._first + 1 - len(self._dense)
        if 0 < missing <= self.DENSE_GROWTH:
            self._dense.extend(array("I", bytes(4 * missing)))
        if seq - self._first < len(self._dense):
            self._dense[seq - self._first] = value
        else:
            self._sparse[seq] = value

    def forget_through(self, seq: int) -> None:
        """Drop the fingerprints up to ``seq`` (a snapshot holds those entries), so that they
        cost memory for the entries since the snapshot, not for the whole history."""
        drop = min(len(self._dense), seq - self._first + 1)
        if drop > 0:
            del self._dense[:drop]
            self._first += drop
        if not self._dense:
            self._first = max(self._first, seq + 1)
        for old in [s for s in self._sparse if s <= seq]:
            del self._sparse[old]


def _decode_record(line: bytes, version: int = VERSION) -> Entry:
    """Parse one record line (without its newline) of a log in ``version``; raise ValueError
    when damaged."""
    crc_hex, sep, body = line.partition(b" ")
    if not sep or len(crc_hex) != 8:
        raise ValueError("record has no checksum field")
    if int(crc_hex, 16) != zlib.crc32(body):
        raise ValueError("checksum mismatch")
    try:
        data = json.loads(body)
        _check_term_field(data, version)
        return Entry.from_dict(data)
    except (json.JSONDecodeError, UnicodeDecodeError, EntryError) as exc:
        raise ValueError(f"record does not parse: {exc}") from None


def _check_term_field(data: Any, version: int) -> None:
    """Hold a record to its file's version: Entry.from_dict reads a missing term as 1, which is
    right for a version 1 record but would hide a version 2 record that lost its term."""
    if not isinstance(data, dict):
        return  # from_dict says what is wrong
    if version >= 2 and "term" not in data:
        raise EntryError(f"a version {version} record must carry a term")
    if version == 1 and "term" in data:
        raise EntryError(f"a version 1 record carries no term, got term {data['term']!r}")


def _read_header(path: str, data: bytes) -> tuple[int | None, int]:
    """The format version a log declares and the offset of its first record.

    ``(None, 0)`` when the file is a header cut short by a crash: nothing was written after it.
    """
    line_end = data.find(b"\n")
    first = data if line_end == -1 else data[:line_end + 1]
    for version in READS_VERSIONS:
        if first == HEADER_PREFIX + b"%d\n" % version:
            return version, len(first)
    if any((HEADER_PREFIX + b"%d\n" % version).startswith(data) for version in READS_VERSIONS):
        return None, 0
    seen = first[len(HEADER_PREFIX):-1]
    if line_end != -1 and first.startswith(HEADER_PREFIX) and seen.isdigit():
        raise LogVersionError(path, seen.decode())
    raise LogCorruptError(path, 0, f"missing header: the file starts with {data[:16]!r}, not with "
                                   f"{HEADER_PREFIX.decode()}<version>; not a kvlog file")


@dataclass(frozen=True)
class Record:
    offset: int
    entry: Entry


@dataclass(frozen=True)
class LogScan:
    """What :func:`read_log` found in a log file."""

    records: list[Record]
    good_end: int  # byte offset after the last good record
    torn: str | None  # why the tail after ``good_end`` was dropped; None if clean
    version: int | None  # the format version in the header; None if the header itself is torn


def read_log(path: str, keep_from: int = 1) -> LogScan:
    """Read every record of a log file of any version this build reads, changing nothing.

    The file is read line by line, never whole, and records of entries before ``keep_from``
    are checked but not kept (what a snapshot holds), so a restart costs memory for what it
    keeps, not for the log. Raises LogCorruptError for damage before the last record,
    LogVersionError for a format version this build does not read.
    """
    with open(path, "rb") as f:
        version, offset = _read_header(path, f.read(HEADER_PEEK_BYTES))
        if version is None:  # crashed while writing the header itself
            return LogScan([], 0, "incomplete header", None)
        f.seek(offset)
        records: list[Record] = []
        line = f.readline()
        while line:
            following = f.readline()
            if not line.endswith(b"\n"):
                return LogScan(records, offset, "last record has no end of line (torn write)", version)
            try:
                entry = _decode_record(line[:-1], version)
            except ValueError as exc:
                if not following:
                    return LogScan(records, offset, f"last record is damaged ({exc})", version)
                raise LogCorruptError(path, offset, str(exc)) from None
            if entry.seq >= keep_from:
                records.append(Record(offset, entry))
            offset += len(line)
            line = following
    return LogScan(records, offset, None, version)


def scan(path: str) -> tuple[list[Record], int, str | None]:
    """:func:`read_log` as the tuple ``(records, good_end, torn_reason)``, for callers that
    do not care about the format version."""
    found = read_log(path)
    return found.records, found.good_end, found.torn


def iter_entries(path: str) -> Iterator[Entry]:
    return (r.entry for r in read_log(path).records)


class LogFile:
    """An open log: appends records and makes them durable according to the fsync policy.

        log, entries = LogFile.open("data/leader", "batch")
        log.append(entry)          # written to the OS at once, on the event loop
        await log.sync()           # durable once this returns (group commit under "batch")
    """

    def __init__(self, path: str, fsync: str, file) -> None:
        self.path = path
        self.fsync = fsync
        self._file = file
        self._appended = 0  # records appended since open
        self._synced = 0  # records known durable
        self._sync_requested = 0  # records some started or planned fsync will cover
        self._thread_sync: tuple[int, asyncio.Future] | None = None  # "always": the latest fsync, what it covers
        self._round: asyncio.Future | None = None  # the next or running fsync (batch policy) ...
        self._round_covers: int | None = None  # ... covers this many records (None: not started)
        self._sync_time = 0.0  # moving average of one fsync, s
        self.inline_sync = True  # group-commit fsyncs on the loop (while they are quick) or in the sync thread
        self._next_round: asyncio.Future | None = None  # for records appended while it runs
        # A thread of its own: a sync never waits behind DNS lookups or other pool work.
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="log-sync")

    @classmethod
    def open(cls, data_dir: str, fsync: str, keep_from: int = 1) -> tuple[LogFile, list[Entry]]:
        """Open (or create) the log in ``data_dir`` and return it with the entries it holds
        from ``keep_from`` on (the file keeps every record)."""
        os.makedirs(data_dir, exist_ok=True)
        path = os.path.join(data_dir, LOG_FILE_NAME)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + COMPACT_SUFFIX)  # a compaction cut short by a crash; the log is whole
        records: list[Record] = []
        good_end = 0
        if os.path.exists(path):
            found = read_log(path, keep_from)  # raises on damage before anything is changed
            records, good_end = found.records, found.good_end
            if found.torn:
                log.warning("log %s: dropping torn tail at offset %d: %s", path, good_end, found.torn)
            if found.version == 1:
                good_end = _upgrade_v1(path, read_log(path).records)  # every record: the upgrade rewrites them all
        f = open(path, "r+b" if os.path.exists(path) else "w+b")
        if good_end == 0:
            f.truncate(0)
            f.write(HEADER)
            good_end = len(HEADER)
        f.truncate(good_end)
        f.seek(good_end)
        f.flush()
        os.fsync(f.fileno())
        fsync_dir(data_dir)
        return cls(path, fsync, f), [r.entry for r in records]

    def append(self, entry: Entry) -> None:
        """Hand one record to the OS in a single write; call :meth:`sync` to make it durable."""
        self.append_record(encode_record(entry))

    def append_record(self, record: bytes) -> None:
        """Like :meth:`append`, for a record already made by :func:`encode_record`."""
        self._file.write(record)
        self._file.flush()
        self._appended += 1

    def append_records(self, records: list[bytes]) -> None:
        """Several records in one write (a follower storing a batch)."""
        if records:
            self._file.write(b"".join(records))
            self._file.flush()
            self._appended += len(records)

    @property
    def appended(self) -> int:
        """Records appended since the log was opened."""
        return self._appended

    @property
    def synced(self) -> int:
        """Records since open known durable (all appended ones under ``off``)."""
        return self._appended if self.fsync == "off" else self._synced

    async def sync(self) -> None:
        """Return once every record appended before this call is durable under the policy."""
        await self.sync_future()

    def sync_future(self, upto: int | None = None) -> asyncio.Future:
        """A Future done once the first ``upto`` records appended since open (default: all of
        them) are durable under the policy; done at once if they already are.

        Under ``batch`` all callers until the next fsync starts share one Future (group
        commit): the fsync runs at the end of the current loop iteration, so it covers every
        record appended meanwhile, and at most one runs at a time; records appended while one
        runs share the next.
        """
        loop = asyncio.get_running_loop()
        if self.fsync == "off" or self._synced >= (self._appended if upto is None else upto):
            done = loop.create_future()
            done.set_result(None)
            return done
        if self.fsync == "always":  # one fsync per caller unless one already started covers it
            covering = self._thread_sync
            if upto is not None and covering is not None and covering[0] >= upto and not covering[1].done():
                return covering[1]
            return self._fsync_in_thread(loop)
        if self._round is None:
            self._round, self._round_covers = loop.create_future(), None
            loop.call_soon(self._run_round)
            return self._round
        if self._round_covers is None or self._round_covers >= (self._appended if upto is None else upto):
            return self._round
        if self._next_round is None:
            self._next_round = loop.create_future()
        return self._next_round

    def start_sync(self) -> None:
        """Make everything appended so far durable soon, without waiting for it (the leader
        calls this when it ships entries: no follower should hold an entry its leader could
        still lose to a power cut, beyond one sync's time)."""
        if self.fsync == "off" or self._sync_requested >= self._appended:
            return
        self._sync_requested = self._appended
        self.sync_future()

    def _fsync_in_thread(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        covers = self._sync_requested = self._appended
        running = loop.run_in_executor(self._syncer, os.fsync, self._file.fileno())

        def note_durable(done: asyncio.Future) -> None:
            if not done.cancelled() and done.exception() is None:
                self._synced = max(self._synced, covers)
            else:  # not durable: the next start_sync must try again
                self._sync_requested = self._synced

        running.add_done_callback(note_durable)
        self._thread_sync = (covers, running)
        return running

    def _run_round(self) -> None:
        """One fsync for everything appended so far: on the loop while syncs are quick, which
        spares a thread hand-off per round, in the sync thread once they are not (a slow disk
        must not stall the loop)."""
        self._round_covers = self._sync_requested = self._appended
        fd = self._file.fileno()
        if self.inline_sync:
            started = time.perf_counter()
            try:
                os.fsync(fd)
            except OSError as exc:
                self._round_done(exc)
                return
            self._note_sync_time(time.perf_counter() - started)
            self._round_done(None)
            return
        running = asyncio.get_running_loop().run_in_executor(self._syncer, _timed_fsync, fd)
        running.add_done_callback(self._thread_round_done)

    def _thread_round_done(self, running: asyncio.Future) -> None:
        if running.cancelled():
            self._round_done(asyncio.CancelledError())
        elif running.exception() is not None:
            self._round_done(running.exception())
        else:
            self._note_sync_time(running.result())
            self._round_done(None)

    def _note_sync_time(self, seconds: float) -> None:
        self._sync_time = 0.8 * self._sync_time + 0.2 * seconds
        inline = self._sync_time < INLINE_SYNC_MAX_S
        if inline != self.inline_sync:
            log.info("log %s: fsync takes %.2f ms on average; syncing %s", self.path, 1000 * self._sync_time,
                     "on the event loop" if inline else "in the sync thread")
            self.inline_sync = inline

    def _round_done(self, error: BaseException | None) -> None:
        result, self._round = self._round, None
        if error is None:
            self._synced = max(self._synced, self._round_covers)
        else:  # not durable: the next start_sync must try again
            self._sync_requested = self._synced
        if not result.done():
            if error is None:
                result.set_result(None)
            else:
                result.set_exception(error)
        waiting, self._next_round = self._next_round, None
        if waiting is not None:
            self._round, self._round_covers = waiting, None
            asyncio.get_running_loop().call_soon(self._run_round)

    def mark(self) -> int:
        """The byte offset where the next record goes. Compaction keeps every record written
        after it, whatever the caller decided from what it held when it asked."""
        self._file.flush()
        return self._file.tell()

    async def compact(self, mark: int, kept: list[Entry]) -> tuple[int, int]:
        """Replace the log by ``kept`` (entries written before ``mark`` that must stay) and
        every record written since ``mark``; return the file's size before and after.

        Log compaction by rewrite, not by segments: the file stays one file in one format that
        every tool reads, and what is rewritten is bounded (the entries since the previous
        snapshot and those kept for lagging followers). The bulk is written and synced in a
        worker thread while the node goes on appending; the records appended meanwhile are then
        copied over on the loop (a few), the new file synced, renamed over the old one and the
        directory synced: a crash leaves the old log or the new one, whole. Appends, syncs
        and their waiters carry on across the swap: every record appended so far is durable
        in the new file, and the old file is closed only after the fsyncs queued on it.
        """
        temporary = self.path + COMPACT_SUFFIX
        loop = asyncio.get_running_loop()
        new = await loop.run_in_executor(None, _write_synced, temporary, kept)
        try:
            self._file.flush()
            before = self._file.tell()
            with open(self.path, "rb") as old:
                old.seek(mark)
                new.write(old.read())
            new.flush()
            os.fsync(new.fileno())
            os.chmod(temporary, stat.S_IMODE(os.stat(self.path).st_mode))
            os.replace(temporary, self.path)
        except BaseException:
            new.close()
            with contextlib.suppress(OSError):
                os.remove(temporary)
            raise
        fsync_dir(os.path.dirname(self.path) or ".")
        old_file, self._file = self._file, new
        self._syncer.submit(old_file.close)
        self._synced = self._sync_requested = self._appended
        return before, new.tell()

    @classmethod
    def rewrite(cls, old: LogFile, data_dir: str, entries: list[Entry]) -> LogFile:
        """Replace the log by exactly ``entries`` (atomic) and return it open for appending:
        after a rollback, or when a promoted follower puts its log in sequence order."""
        old.close()
        write_log_file(old.path, entries, mode_of=old.path)
        reopened, _ = cls.open(data_dir, old.fsync)
        return reopened

    def close(self) -> None:
        self._syncer.shutdown(wait=True)
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


def write_log_file(path: str, entries: list[Entry], mode_of: str | None = None) -> int:
    """Write ``entries`` as a whole version-2 log at ``path``, atomically, and return its size.

    The log is written and synced to a temporary file in the same directory, renamed over
    ``path`` and the directory synced: a crash leaves the old file or the new one, whole.
    """
    data = HEADER + b"".join(encode_record(entry) for entry in entries)
    temporary = path + UPGRADE_SUFFIX
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode_of and os.path.exists(mode_of):
            os.chmod(temporary, stat.S_IMODE(os.stat(mode_of).st_mode))  # the log keeps its permissions
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    fsync_dir(os.path.dirname(path) or ".")
    return len(data)


def _upgrade_v1(path: str, records: list[Record]) -> int:
    """Rewrite a version 1 log as version 2 and return its new size (atomic, see
    :func:`write_log_file`: a crash leaves the old log, upgraded again on the next open)."""
    size = write_log_file(path, [r.entry for r in records], mode_of=path)
    log.info("log %s: upgraded from format version 1 to %d: %d records, read as term 1", path, VERSION, len(records))
    return size


def _write_synced(path: str, entries: list[Entry]):
    """A new log holding ``entries``, synced, left open for more (a worker thread's part of
    :meth:`LogFile.compact`). Encoded one by one as they are written: the rewrite costs the
    loop nothing and memory no second copy of the log."""
    f = open(path, "w+b")
    try:
        f.write(HEADER)
        f.writelines(encode_record(entry) for entry in entries)
        f.flush()
        os.fsync(f.fileno())
    except BaseException:
        f.close()
        raise
    return f


def _timed_fsync(fd: int) -> float:
    started = time.perf_counter()
    os.fsync(fd)
    return time.perf_counter() - started


def fsync_dir(path: str) -> None:
    """Make a newly created file's directory entry durable too."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
