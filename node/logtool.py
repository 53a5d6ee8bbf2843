"""Inspect replication logs: print one, verify checksums, compare several by sequence number.

    python -m node.logtool show    data/leader/replication.log
    python -m node.logtool verify  data/*/replication.log
    python -m node.logtool compare data/leader/replication.log data/follower*/replication.log

``compare`` takes the first log as the reference (normally the leader's) and reports, for every
other log, the first sequence numbers that are missing, different or extra. Follower logs are
in arrival order, so logs are compared as maps ``seq -> entry``, not line by line. An entry is
different when any field differs, its term included. Logs in format version 1 (no terms) read
as term 1 and compare with version 2 logs entry by entry; the tool only reads, so it never
upgrades a file (a node does that when it opens its log).
Exit status: 0 when all logs verify / agree, 1 otherwise, 2 for a damaged or unreadable file.
"""

from __future__ import annotations

import argparse
import json
import sys

from node.log import VERSION, Entry, LogCorruptError, LogScan, read_log

SHOW_FIRST = 10


def load(path: str) -> dict[int, Entry]:
    """A log's entries keyed by sequence number (a torn tail is ignored, as replay does)."""
    return _by_seq(read_log(path))


def _by_seq(found: LogScan) -> dict[int, Entry]:
    return {r.entry.seq: r.entry for r in found.records}


def compare_logs(paths: list[str]) -> dict:
    """Compare logs against ``paths[0]``; return a JSON-friendly report with ``equal`` per log."""
    found = read_log(paths[0])
    reference = _by_seq(found)
    report = {"reference": paths[0], "version": found.version, "entries": len(reference), "logs": []}
    for path in paths[1:]:
        found = read_log(path)
        other = _by_seq(found)
        missing = sorted(set(reference) - set(other))
        extra = sorted(set(other) - set(reference))
        different = sorted(s for s in set(reference) & set(other) if reference[s] != other[s])
        report["logs"].append({
            "path": path,
            "version": found.version,
            "entries": len(other),
            "equal": not (missing or extra or different),
            "missing": missing[:SHOW_FIRST], "missing_count": len(missing),
            "different": different[:SHOW_FIRST], "different_count": len(different),
            "extra": extra[:SHOW_FIRST], "extra_count": len(extra),
        })
    report["equal"] = all(item["equal"] for item in report["logs"])
    return report


def _version_text(version: int | None, explain: bool = True) -> str:
    """The format version for a report line; ``explain`` says what an old version means."""
    if version is None:
        return "format version unknown (header incomplete)"
    if version < VERSION and explain:
        return f"format version {version} (read as term 1; a node upgrades it to {VERSION} when it opens it)"
    return f"format version {version}"


def _show(path: str) -> int:
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
    print(f"reference {report['reference']}: {report['entries']} entries, {_version_text(report['version'], explain=False)}")
    for item in report["logs"]:
        if item["equal"]:
            print(f"  {item['path']}: equal ({item['entries']} entries, {_version_text(item['version'], explain=False)})")
            continue
        print(f"  {item['path']}: DIFFERENT ({item['entries']} entries, {_version_text(item['version'], explain=False)})")
        for kind in ("missing", "different", "extra"):
            if item[f"{kind}_count"]:
                print(f"    {kind}: {item[f'{kind}_count']} seq(s), first {item[kind]}")
    print("all logs equal" if report["equal"] else "logs differ")
    return 0 if report["equal"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.logtool", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("show", help="print every record of one log").add_argument("path")
    sub.add_parser("verify", help="check the checksums of logs").add_argument("paths", nargs="+")
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
    except (LogCorruptError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
