"""Snapshot files: a node's applied state at one seq, so the log before it can go.

DDIA 5.1's "setting up new followers" starts from a consistent snapshot tied to a log
position; a restart, too, needs only the newest snapshot and the log after it. A snapshot is
useful only if it is whole and trustworthy, so each one is written atomically (see
:mod:`node.durable`) under ``DATA_DIR/snapshots/`` and carries two checksums: one over its
header (seq, term, history, sizes) and one over the state. A damaged file is reported with
its name and what is wrong, and :func:`newest_valid` falls back to an older snapshot rather
than serve damaged data.

File layout (format version 1)::

    #kvsnap 1\\n
    <crc32 of the meta, hex> {"history":[[1,1,"leader"]],"keys":2,"seq":57,"state_bytes":31,"state_crc":"9a1b2c3d","term":1}\\n
    {"a":1,"b":{"x":2}}\\n
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass

from node import codec
from node.core.terms import History, check_history
from node.durable import write_atomically

VERSION = 1
HEADER_PREFIX = b"#kvsnap "
HEADER = HEADER_PREFIX + b"%d\n" % VERSION
DIRECTORY = "snapshots"
SUFFIX = ".snap"


class SnapshotError(Exception):
    """A snapshot file is damaged or of an unknown version; the message names the file."""


@dataclass(frozen=True)
class Snapshot:
    seq: int  # the last entry applied to ``data``
    term: int  # that entry's term
    history: History  # the term history of the log up to ``seq``
    data: dict  # key -> [value, seq of the entry that last set it] (``node.store.State``)
    members: list | None = None  # the membership in force at ``seq`` (None: the one PEERS gives)

    def encode(self) -> bytes:
        state = codec.dumps_sorted(self.data)
        meta = {"seq": self.seq, "term": self.term, "history": [list(h) for h in self.history],
                "keys": len(self.data), "state_bytes": len(state), "state_crc": f"{zlib.crc32(state):08x}"}
        if self.members is not None:
            meta["members"] = self.members
        meta = codec.dumps_sorted(meta)
        return HEADER + b"%08x %s\n" % (zlib.crc32(meta), meta) + state + b"\n"


def directory_in(data_dir: str) -> str:
    return os.path.join(data_dir, DIRECTORY)


def file_name(seq: int) -> str:
    """Zero-padded, so that names sort as seqs do."""
    return f"snapshot-{seq:020d}{SUFFIX}"


def write(data_dir: str, snapshot: Snapshot) -> str:
    """Write ``snapshot`` durably; its path (blocking: call it from a worker thread)."""
    os.makedirs(directory_in(data_dir), exist_ok=True)
    path = os.path.join(directory_in(data_dir), file_name(snapshot.seq))
    write_atomically(path, snapshot.encode())
    return path


def read(path: str) -> Snapshot:
    with open(path, "rb") as f:
        return decode(path, f.read())


def decode(path: str, data: bytes) -> Snapshot:
    if not data.startswith(HEADER):
        raise SnapshotError(f"snapshot {path} starts with {data[:16]!r}, not {HEADER.strip().decode()}: "
                            f"written by another build, or damaged")
    meta_line, _, rest = data[len(HEADER):].partition(b"\n")
    crc, _, meta_bytes = meta_line.partition(b" ")
    try:
        if int(crc, 16) != zlib.crc32(meta_bytes):
            raise ValueError("the header's checksum does not match")
        meta = json.loads(meta_bytes)
        state = rest[:-1] if rest.endswith(b"\n") else rest
        if len(state) != meta["state_bytes"]:
            raise ValueError(f"the state is {len(state)} bytes, the header says {meta['state_bytes']} (torn write?)")
        if f"{zlib.crc32(state):08x}" != meta["state_crc"]:
            raise ValueError("the state's checksum does not match")
        snapshot = Snapshot(seq=int(meta["seq"]), term=int(meta["term"]), history=check_history(meta["history"]),
                            data=json.loads(state), members=meta.get("members"))
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"snapshot {path} is damaged: {exc}") from None
    if len(snapshot.data) != meta["keys"]:
        raise SnapshotError(f"snapshot {path} is damaged: {len(snapshot.data)} keys, the header says {meta['keys']}")
    return snapshot


def paths(data_dir: str) -> list[str]:
    """Every snapshot file of ``data_dir``, newest (highest seq) first."""
    try:
        names = os.listdir(directory_in(data_dir))
    except FileNotFoundError:
        return []
    return [os.path.join(directory_in(data_dir), n)
            for n in sorted((n for n in names if n.startswith("snapshot-") and n.endswith(SUFFIX)), reverse=True)]


def newest_valid(data_dir: str) -> tuple[Snapshot | None, list[str]]:
    """The newest snapshot that reads back whole, and why each newer one was skipped (for the
    node's log: a damaged snapshot is never used, and never silently)."""
    skipped = []
    for path in paths(data_dir):
        try:
            return read(path), skipped
        except (SnapshotError, OSError) as exc:
            skipped.append(str(exc))
    return None, skipped


def prune(data_dir: str, keep: int = 2) -> list[str]:
    """Delete all but the ``keep`` newest snapshots (an older one is the fallback if the newest
    is damaged); the paths deleted."""
    if keep < 1:
        raise ValueError("keep at least one snapshot")
    doomed = paths(data_dir)[keep:]
    for path in doomed:
        os.remove(path)
    return doomed
