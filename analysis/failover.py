"""The failover study: what a leader's crash costs, for every write quorum and leader lease.

    python -m analysis.failover                       # W = 1..5, LEADER_TTL 2000 and 4000 ms
    python -m analysis.failover --quorums 1 5 --ttls 2000 --repeats 1 --out /tmp/fo

Per W, TTL and repeat: the six nodes start as local processes with automatic failover on a
shared etcd; ten writers keep writing over ten keys; the leader is SIGKILLed mid-stream and
the supervisor starts it again after ``--restart-delay``; once a new leader has acknowledged
writes for a while, the writers stop, the cluster converges, and the history is checked: no
acknowledged write lost, every rolled-back entry unacknowledged. Then one failover that
cannot happen is shown (W = 1 with a follower down), and the results are written to
``analysis/results/failover/``: failover.csv, writes.csv, leaders.csv, possibility.csv,
demonstration.json, the figures and REPORT.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import asdict, replace

import pandas as pd

from analysis import FOLLOWER_COUNT
from analysis.failover_model import failover_table, replay, run_row, write_fates
from analysis.failover_plots import plot_all
from analysis.failover_report import write_report
from analysis.failover_run import OLD_LEADER, RunRecord, RunSettings, failover_run, impossible_failover
from node.etcd_local import etcd_binary, start_etcd

DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "failover")
PORTS = FOLLOWER_COUNT + 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analysis.failover", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quorums", type=int, nargs="+", default=list(range(1, FOLLOWER_COUNT + 1)), metavar="W",
                   help="write quorums (default: 1 2 3 4 5)")
    p.add_argument("--ttls", type=int, nargs="+", default=[2000, 4000], metavar="MS",
                   help="LEADER_TTL values, whole seconds in ms, at least 2000 (default: 2000 4000)")
    p.add_argument("--repeats", type=int, default=3, help="runs per W and TTL (default: %(default)s)")
    p.add_argument("--out", default=DEFAULT_OUTPUT, help="output directory (default: analysis/results/failover/)")
    p.add_argument("--before", type=float, default=2.0, metavar="S", help="seconds of writes before the kill")
    p.add_argument("--after", type=float, default=2.0, metavar="S",
                   help="seconds of writes after the new leader's first acknowledgment (default: %(default)s)")
    p.add_argument("--restart-delay", type=float, default=None, metavar="S",
                   help="the supervisor starts the killed leader again after this long (default: LEADER_TTL + 1 s, "
                        "so its lease has run out and a follower takes over; a leader back within its lease takes "
                        "its key back and no failover happens)")
    p.add_argument("--max-delay", type=int, default=100, metavar="MS",
                   help="MAX_DELAY of the simulated replication lag, MIN_DELAY being 0 (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=10, help="writes in flight (default: %(default)s)")
    p.add_argument("--keys", type=int, default=10, help="keys written (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the key choice and the delay draws")
    p.add_argument("--no-demonstration", action="store_true", help="skip the failover shown to be impossible")
    p.add_argument("--base-port", type=int, default=0,
                   help="first of the six ports (default: a free block chosen at start)")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse what the nodes would refuse, before any cluster starts."""
    if not all(1 <= w <= FOLLOWER_COUNT for w in args.quorums):
        parser.error(f"--quorums must lie in 1..{FOLLOWER_COUNT}")
    if not all(t >= 2000 and t % 1000 == 0 for t in args.ttls):
        parser.error("--ttls must be whole seconds of at least 2000 ms (etcd's leases count in seconds)")
    for name in ("repeats", "concurrency", "keys"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if min(args.before, args.after, args.restart_delay or 0, args.max_delay) < 0:
        parser.error("--before, --after, --restart-delay and --max-delay must not be negative")


def free_block(count: int = PORTS) -> int:
    """A base port with ``count`` free ports after it, below the ephemeral range."""
    for base in range(21000 + os.getpid() % 400 * 20, 32700, count + 1):
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no block of free ports on 127.0.0.1")


def restart_delay_s(args: argparse.Namespace, ttl_ms: int) -> float:
    return args.restart_delay if args.restart_delay is not None else ttl_ms / 1000 + 1.0


def settings_of(args: argparse.Namespace, quorum: int, ttl: int, repeat: int) -> RunSettings:
    return RunSettings(quorum, ttl, repeat, before_s=args.before, after_s=args.after,
                       restart_delay_s=restart_delay_s(args, ttl), concurrency=args.concurrency, keys=args.keys,
                       max_delay_ms=args.max_delay, seed=args.seed)


# --- from a run's record to rows ----------------------------------------------------------------


def relative(record: RunRecord) -> tuple[list[dict], list[dict]]:
    """The run's writes and events with times in seconds after the kill."""
    k = record.kill_at
    writes = [{**{c: v for c, v in w.items() if c not in ("start_at", "end_at")},
               "start_s": w["start_at"] - k, "end_s": w["end_at"] - k} for w in record.writes]
    events = [{**{c: v for c, v in e.items() if c != "at"}, "t_s": e["at"] - k}
              for e in sorted(record.events, key=lambda e: e["at"])]
    return sorted(writes, key=lambda w: w["write"]), events


def tables_of(record: RunRecord) -> tuple[dict, list[dict], list[dict]]:
    """failover.csv's row, writes.csv's rows and leaders.csv's rows of one run."""
    s = record.settings
    writes, events = relative(record)
    fate = write_fates(writes, record.log, record.rolled_back)
    rolled = set(fate.rolled_back)
    expected = replay(record.log)
    key = {"W": s.quorum, "ttl_ms": s.ttl_ms, "repeat": s.repeat}
    row = {**key, **run_row(writes, events, fate, OLD_LEADER), "new_leader": record.new_leader,
           "new_term": record.new_term, "logs_equal": record.logs_equal,
           "replicas_match": bool(record.replicas) and all(a.get("data") == expected for a in record.replicas.values()),
           "promotion_unavailable_s": (record.last_failover or {}).get("unavailable_s"), "wall_s": record.wall_s}
    write_rows = [{**key, **w, "in_final_log": w["value"] in fate.in_log, "rolled_back": w["value"] in rolled}
                  for w in writes]
    return row, write_rows, [{**key, **e} for e in events]


def progress(row: dict, total: int, index: int) -> str:
    return (f"W={row['W']} TTL={row['ttl_ms']} run {row['repeat']}/{total} ({index}): {row['acknowledged']} acknowledged, "
            f"{row['unknown']} unknown, {row['refused']} refused, lost {row['lost']}, rolled back {row['rolled_back']}, "
            f"unavailable {row['unavailable_s']:.2f} s (new leader {row['new_leader']} {row['elected_s']:.2f} s after "
            f"the kill)")


# --- the study ----------------------------------------------------------------------------------


def run_all(args: argparse.Namespace, etcd_endpoints: list[str], workdir: str) -> tuple[list, list, list]:
    runs, writes, events = [], [], []
    plan = [(q, t, r) for t in args.ttls for q in args.quorums for r in range(1, args.repeats + 1)]
    for i, (quorum, ttl, repeat) in enumerate(plan, 1):
        data_dir = tempfile.mkdtemp(prefix=f"w{quorum}-t{ttl}-r{repeat}-", dir=workdir)
        base = args.base_port or free_block()
        record = asyncio.run(failover_run(settings_of(args, quorum, ttl, repeat), etcd_endpoints, data_dir, base))
        row, write_rows, event_rows = tables_of(record)
        runs.append(row)
        writes += write_rows
        events += event_rows
        print(progress(row, args.repeats, f"{i}/{len(plan)}"), file=sys.stderr, flush=True)
        shutil.rmtree(data_dir, ignore_errors=True)
    return runs, writes, events


def demonstrate(args: argparse.Namespace, etcd_endpoints: list[str], workdir: str) -> dict:
    """W = 1 with one follower down: the failover the table says cannot happen, run."""
    ttl = min(args.ttls)
    settings = replace(settings_of(args, 1, ttl, 1), failover_timeout_s=30.0)
    data_dir = tempfile.mkdtemp(prefix="impossible-", dir=workdir)
    shown = asyncio.run(impossible_failover(settings, etcd_endpoints, data_dir, args.base_port or free_block(),
                                            down=["follower5"], hold_s=2 * ttl / 1000))
    print(f"W=1 TTL={ttl} with follower5 down: leader elected {shown.any_leader} in {shown.leaderless_s:.1f} s without "
          f"it; {shown.recovered_after_s:.2f} s to a leader once it was back", file=sys.stderr, flush=True)
    return asdict(shown)


def write_outputs(out: str, runs: list, writes: list, events: list, demonstration: dict | None, meta: dict) -> dict:
    os.makedirs(out, exist_ok=True)
    frames = {"failover": pd.DataFrame(runs), "writes": pd.DataFrame(writes), "leaders": pd.DataFrame(events),
              "possibility": pd.DataFrame(failover_table(FOLLOWER_COUNT))}
    paths = {}
    for name, frame in frames.items():
        paths[name] = os.path.join(out, f"{name}.csv")
        frame.to_csv(paths[name], index=False)
    paths["demonstration"] = os.path.join(out, "demonstration.json")
    with open(paths["demonstration"], "w") as f:
        json.dump(demonstration, f, indent=2)
    figures = plot_all(frames["failover"], frames["writes"], frames["leaders"], out)
    paths.update({f"figure_{k}": os.path.join(out, v) for k, v in figures.items()})
    paths["report"] = write_report(out, frames, demonstration, figures, meta)
    return paths


def run_study(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="failover-study-")
    etcd = start_etcd(1)
    try:
        runs, writes, events = run_all(args, etcd.endpoints, workdir)
        demonstration = None if args.no_demonstration else demonstrate(args, etcd.endpoints, workdir)
    finally:
        etcd.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    meta = {"quorums": args.quorums, "ttls": args.ttls, "repeats": args.repeats, "before_s": args.before,
            "after_s": args.after, "restart_delay_s": args.restart_delay, "max_delay_ms": args.max_delay,
            "concurrency": args.concurrency, "keys": args.keys, "seed": args.seed, "followers": FOLLOWER_COUNT,
            "write_timeout_ms": RunSettings.write_timeout_ms, "wall_s": time.monotonic() - started,
            "cpus": os.cpu_count()}
    return write_outputs(args.out, runs, writes, events, demonstration, meta)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if etcd_binary() is None:
        sys.exit("the failover study needs etcd on PATH (apt-get install etcd-server)")
    paths = run_study(args)
    print(f"report: {paths['report']}", file=sys.stderr)
    return paths


if __name__ == "__main__":
    main()
