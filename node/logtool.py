"""Inspect replication logs and snapshots: print one, verify checksums, compare several.

    python -m node.logtool show    data/leader/replication.log
    python -m node.logtool show    data/leader/snapshots/snapshot-00000000000000010000.snap
    python -m node.logtool verify  data/*/replication.log data/*/snapshots/*.snap
    python -m node.logtool compare data/leader/replication.log data/follower*/replication.log

``compare`` takes the first log as the reference (normally the leader's) and reports, for every
other log, the first sequence numbers that are missing, different or extra. Follower logs are
in arrival order, so logs are compared as maps ``seq -> entry``, not line by line. An entry is
different when any field differs, its term included. Logs in format version 1 (no terms) read
as term 1 and compare with version 2 logs entry by entry; the tool only reads, so it never
upgrades a file (a node does that when it opens its log).

Compacted logs start at different points: each log is read with the newest valid snapshot in
the ``snapshots/`` directory beside it. An entry a log lacks is missing only if its snapshot
does not hold it either; and the states are compared at the highest seq both nodes can
rebuild (snapshot plus the entries after it), so two nodes whose histories overlap in nothing
but a snapshot are still checked.
Exit status: 0 when all logs verify / agree, 1 otherwise, 2 for a damaged or unreadable file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass

from node import snapshot as snapshots
from node.log import VERSION, Entry, LogCorruptError, LogScan, read_log
from node.snapshot import Snapshot, SnapshotError
from node.store import build_state

SHOW_FIRST = 10


def load(path: str) -> dict[int, Entry]:
    """A log's entries keyed by sequence number (a torn tail is ignored, as replay does)."""
    return _by_seq(read_log(path))


def _by_seq(found: LogScan) -> dict[int, Entry]:
    return {r.entry.seq: r.entry for r in found.records}


@dataclass
class NodeView:
    """One node's data as its files have it: the newest valid snapshot beside the log (if any)
    and the log's entries."""

    path: str
    version: int | None
    entries: dict[int, Entry]
    snapshot: Snapshot | None

    @property
    def snapshot_seq(self) -> int:
        return self.snapshot.seq if self.snapshot else 0

    def holds(self, seq: int) -> bool:
        return seq <= self.snapshot_seq or seq in self.entries

    def rebuildable_through(self) -> int:
        """The highest seq whose state the snapshot and the entries after it give."""
        seq = self.snapshot_seq
        while seq + 1 in self.entries:
            seq += 1
        return seq

    def state_at(self, seq: int) -> dict:
        base = self.snapshot.data if self.snapshot else {}
        return build_state(base, [self.entries[s] for s in range(self.snapshot_seq + 1, seq + 1)])


def read_node(path: str) -> NodeView:
    """A log and the newest valid snapshot in ``snapshots/`` beside it."""
    found = read_log(path)
    snapshot, _ = snapshots.newest_valid(os.path.dirname(path) or ".")
    return NodeView(path, found.version, _by_seq(found), snapshot)


def compare_logs(paths: list[str]) -> dict:
    """Compare logs against ``paths[0]``; return a JSON-friendly report with ``equal`` per log."""
    reference = read_node(paths[0])
    report = {"reference": paths[0], "version": reference.version, "entries": len(reference.entries),
              "snapshot_seq": reference.snapshot_seq, "logs": []}
    for path in paths[1:]:
        report["logs"].append(_compare_one(reference, read_node(path)))
    report["equal"] = all(item["equal"] for item in report["logs"])
    return report


def _compare_one(reference: NodeView, other: NodeView) -> dict:
    ref, oth = reference.entries, other.entries
    missing = sorted(s for s in ref if s not in oth and not other.holds(s))
    extra = sorted(s for s in oth if s not in ref and not reference.holds(s))
    different = sorted(s for s in set(ref) & set(oth) if ref[s] != oth[s])
    common = min(reference.rebuildable_through(), other.rebuildable_through())
    state_equal = None  # not comparable: no seq both can rebuild
    if common >= max(reference.snapshot_seq, other.snapshot_seq) and (reference.snapshot or other.snapshot):
        state_equal = reference.state_at(common) == other.state_at(common)
    return {
        "path": other.path,
        "version": other.version,
        "entries": len(oth),
        "snapshot_seq": other.snapshot_seq,
        "equal": not (missing or extra or different) and state_equal is not False,
        "state_seq": common if state_equal is not None else None, "state_equal": state_equal,
        "missing": missing[:SHOW_FIRST], "missing_count": len(missing),
        "different": different[:SHOW_FIRST], "different_count": len(different),
        "extra": extra[:SHOW_FIRST], "extra_count": len(extra),
    }


def _snapshot_text(seq: int) -> str:
    return f" after a snapshot at seq {seq}" if seq else ""


def _version_text(version: int | None, explain: bool = True) -> str:
    """The format version for a report line; ``explain`` says what an old version means."""
    if version is None:
        return "format version unknown (header incomplete)"
    if version < VERSION and explain:
        return f"format version {version} (read as term 1; a node upgrades it to {VERSION} when it opens it)"
    return f"format version {version}"


def _is_snapshot(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(len(snapshots.HEADER_PREFIX)) == snapshots.HEADER_PREFIX


def _is_pair(item) -> bool:
    return isinstance(item, list) and len(item) == 2 and isinstance(item[1], int)


def _snapshot_line(path: str, found: Snapshot) -> str:
    return (f"{path}: snapshot format version {snapshots.VERSION}, checksums ok, seq {found.seq}, term {found.term}, "
            f"{len(found.data)} keys, history {[list(h) for h in found.history]}")


def _show(path: str) -> int:
    if _is_snapshot(path):
        found = snapshots.read(path)
        print(_snapshot_line(path, found))
        for key in sorted(found.data):
            value, seq = found.data[key] if _is_pair(found.data[key]) else (found.data[key], "?")
            print(f"  key={key!r}  seq={seq:<8} value={json.dumps(value, ensure_ascii=False)}")
        return 0
    found = read_log(path)
    for record in found.records:
        e = record.entry
        value = json.dumps(e.value, ensure_ascii=False)
        print(f"{record.offset:>10}  seq={e.seq:<8} term={e.term:<4} {e.op:<6} ts={e.ts:.6f}  key={e.key!r}  value={value}")
    if found.torn:
        print(f"torn tail at offset {found.good_end}: {found.torn}")
    return 0


def _verify(paths: list[str]) -> int:
    status = 0
    for path in paths:
        if _is_snapshot(path):
            print(_snapshot_line(path, snapshots.read(path)))
            continue
        found = read_log(path)
        records, good_end, torn = found.records, found.good_end, found.torn
        seqs = [r.entry.seq for r in records]
        duplicates = len(seqs) - len(set(seqs))
        line = f"{path}: {_version_text(found.version)}, {len(records)} records, checksums ok"
        if seqs:
            line += f", seq {min(seqs)}..{max(seqs)}"
            gaps = max(seqs) - min(seqs) + 1 - len(set(seqs))
            if gaps:
                line += f", {gaps} seq(s) missing in between"
        if duplicates:
            line += f", {duplicates} duplicate seq(s)"
        if torn:
            line += f"; torn tail at offset {good_end} ({torn})"
            status = 1
        print(line)
    return status


def _compare(paths: list[str]) -> int:
    report = compare_logs(paths)
    print(f"reference {report['reference']}: {report['entries']} entries{_snapshot_text(report['snapshot_seq'])}, "
          f"{_version_text(report['version'], explain=False)}")
    for item in report["logs"]:
        held = (f"{item['entries']} entries{_snapshot_text(item['snapshot_seq'])}, "
                f"{_version_text(item['version'], explain=False)}")
        state = "" if item["state_equal"] is None else \
            f"; states at seq {item['state_seq']} {'equal' if item['state_equal'] else 'DIFFER'}"
        if item["equal"]:
            print(f"  {item['path']}: equal ({held}{state})")
            continue
        print(f"  {item['path']}: DIFFERENT ({held}{state})")
        for kind in ("missing", "different", "extra"):
            if item[f"{kind}_count"]:
                print(f"    {kind}: {item[f'{kind}_count']} seq(s), first {item[kind]}")
    print("all logs equal" if report["equal"] else "logs differ")
    return 0 if report["equal"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.logtool", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("show", help="print every record of one log, or every key of one snapshot").add_argument("path")
    sub.add_parser("verify", help="check the checksums of logs and snapshots").add_argument("paths", nargs="+")
    cmp = sub.add_parser("compare", help="compare logs with the first one, by seq")
    cmp.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "show":
            return _show(args.path)
        if args.command == "verify":
            return _verify(args.paths)
        if len(args.paths) < 2:
            parser.error("compare needs at least two logs")
        return _compare(args.paths)
    except (LogCorruptError, SnapshotError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
