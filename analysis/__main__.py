"""Command line of the write-quorum study: ``python -m analysis --help``.

For each quorum k: restart the leader with WRITE_QUORUM=k, clear the store (replicated) and wait
until every follower applied the clear, send the writes, snapshot all replicas at once, poll until
they match the leader, compare the six logs. Then write CSV, JSON, figures and REPORT.md.

The leader is whichever node node.client finds leading (Client.leader(), asked of all six), not
necessarily the one named leader: after a promotion it is another. The writes go through
Client.write; summary.json and the progress output name the node measured as leader.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import pandas as pd
from tornado.httpclient import AsyncHTTPClient
from tqdm import tqdm

from analysis import FOLLOWER_COUNT, NODE_NAMES, add_seeded_workload, check_workload
from analysis import consistency as cons
from analysis.cluster import (
    Cluster,
    ComposeCluster,
    Endpoints,
    LocalCluster,
    find_leader,
    get_json,
    make_client,
    make_endpoints,
    run_cli,
)
from analysis.report import write_outputs
from analysis.workload import follower_names, plan_writes, reset_store, run_writes
from node.client import Client

DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# Each write's deadline in node.client: above the nodes' WRITE_TIMEOUT (10 s by default), so a
# quorum that is not reached comes back as the leader's 504, not as the client giving up.
WRITE_DEADLINE_S = 30.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--local", action="store_true",
                   help="start the six nodes as local processes (node.cluster) instead of using Docker Compose")
    w = p.add_argument_group("workload")
    w.add_argument("--concurrency", type=int, default=10, help="writes in flight (default: %(default)s)")
    w.add_argument("--keys", type=int, default=10, help="distinct keys written (default: %(default)s)")
    w.add_argument("--quorums", type=int, nargs="+", default=list(range(1, FOLLOWER_COUNT + 1)),
                   metavar="K", help="write quorums to study (default: 1 2 3 4 5)")
    add_seeded_workload(w, "the key choice, the bootstrap and the leader's delay draws")
    w.add_argument("--output", default=DEFAULT_OUTPUT, help="output directory (default: analysis/results/)")
    w.add_argument("--poll-interval", type=float, default=0.05, help="convergence poll interval, s (default: %(default)s)")
    w.add_argument("--converge-timeout", type=float, default=30.0, help="max wait for convergence, s (default: %(default)s)")
    w.add_argument("--no-progress", action="store_true", help="no progress bars")
    n = p.add_argument_group("where the nodes are")
    n.add_argument("--base-url", default="http://127.0.0.1", help="scheme and host of all nodes (default: %(default)s)")
    n.add_argument("--base-port", type=int, default=8000, help="leader port; follower i on base+i (default: %(default)s)")
    loc = p.add_argument_group("--local")
    loc.add_argument("--data-dir", help="data directory of the local nodes (default: a temporary one, removed afterwards)")
    loc.add_argument("--node-log-level", default="ERROR", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                     help="LOG_LEVEL of the local nodes (default: %(default)s)")
    c = p.add_argument_group("Docker Compose")
    c.add_argument("-p", "--project-name", help="compose project name (default: the one `make up` uses)")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse settings the nodes would refuse too, before anything is started."""
    check_workload(parser, args, ("writes", "concurrency", "keys"))
    if args.local and args.base_url != "http://127.0.0.1":
        parser.error("--local nodes listen on 127.0.0.1; leave --base-url alone")


def make_cluster(args: argparse.Namespace, data_dir: str | None) -> Cluster:
    if args.local:
        return LocalCluster(data_dir, args.base_port, args.min_delay, args.max_delay, args.seed, args.node_log_level)
    return ComposeCluster(make_endpoints(args.base_url, args.base_port), args.min_delay, args.max_delay, args.seed,
                          args.project_name)


# --- one quorum -------------------------------------------------------------------------------


def check_leader(status: dict, args: argparse.Namespace, quorum: int) -> None:
    """The settings must really have reached the leader, or the study measures something else."""
    want = {"write_quorum": quorum, "min_delay_ms": args.min_delay, "max_delay_ms": args.max_delay}
    wrong = {k: (status.get(k), v) for k, v in want.items() if status.get(k) != v}
    if wrong:
        raise RuntimeError(f"leader {status.get('node_id')} runs with {wrong} (seen, wanted); does the compose file "
                           f"pass WRITE_QUORUM, MIN_DELAY and MAX_DELAY to every node?")


async def measure_quorum(cluster: Cluster, args: argparse.Namespace, quorum: int,
                         bar: tqdm) -> tuple[list[dict], list[dict], dict]:
    """Find the leader, clear, write, then observe the replicas: the writes rows, consistency
    rows and facts of one quorum. ``cluster.endpoints`` is left led by the node measured."""
    http = make_client(2 * len(NODE_NAMES) + 8)  # the snapshot's twelve requests at once
    # One connection per write in flight and a few spare, so no write waits in the client's queue.
    writer = Client(list(cluster.endpoints.by_name.values()), timeout=WRITE_DEADLINE_S,
                    max_clients=args.concurrency + 8)
    try:
        ep = cluster.endpoints = await find_leader(cluster.endpoints, writer)
        status = await get_json(http, f"{ep.leader}/status")
        check_leader(status, args, quorum)
        bar.set_postfix_str(f"k={quorum} clearing, leader {ep.leader_id}")
        clear_seq = await reset_store(writer, http, ep, args.converge_timeout, args.poll_interval)
        names = follower_names(await get_json(http, f"{ep.leader}/status"))
        bar.set_postfix_str(f"k={quorum} writing to {ep.leader_id}")
        plan = plan_writes(args.writes, args.keys, quorum, args.seed)
        writes, t0 = await run_writes(writer, plan, quorum, args.concurrency, names, on_done=lambda: bar.update(1))
        bar.set_postfix_str(f"k={quorum} converging")
        rows, leader_last_seq = await observe_replicas(http, ep, args, quorum, writes, t0, clear_seq)
        facts = {"quorum": quorum, "leader_id": ep.leader_id, "clear_seq": clear_seq, "fsync": status.get("fsync"),
                 "write_timeout_ms": status.get("write_timeout_ms"), "leader_last_seq": leader_last_seq}
        return writes, rows, facts
    finally:
        writer.close()
        http.close()


async def observe_replicas(client: AsyncHTTPClient, ep: Endpoints, args: argparse.Namespace,
                           quorum: int, writes: list[dict], t0: float,
                           clear_seq: int) -> tuple[list[dict], int]:
    """Snapshot every node right after the last write, then time each follower's convergence.

    Nothing else may run between the last answer and the snapshot: any delay lets background
    sends land and makes the replicas look fresher than they were.
    """
    last_s = max(row["end_s"] for row in writes)
    snap_s = time.perf_counter() - t0
    snap = await cons.snapshot(client, ep)
    snap_done_ms = (time.perf_counter() - t0 - last_s) * 1000
    rows = cons.snapshot_rows(quorum, snap, writes, clear_seq, snap_s, last_s, leader=ep.leader_id)
    times = await cons.wait_converged(client, ep, snap[ep.leader_id]["all"],
                                      {r["follower"]: r["identical_at_snapshot"] for r in rows},
                                      t0 + last_s, args.poll_interval, args.converge_timeout)
    for row in rows:
        row.update(converge_s=times[row["follower"]], converged=times[row["follower"]] is not None,
                   snapshot_done_ms=snap_done_ms)
    return rows, int(snap[ep.leader_id]["status"]["last_seq"])


def add_log_comparison(cluster: Cluster, rows: list[dict], facts: dict, workdir: str) -> None:
    """Compare the six logs after convergence, the leader's (``facts["leader_id"]``) first;
    per-follower details go into the consistency rows."""
    paths = cluster.log_paths(workdir)
    leader = facts["leader_id"]
    ordered = [paths[leader]] + [paths[name] for name in paths if name != leader]
    details = cons.builtin_compare_logs(ordered, since_seq=facts["clear_seq"])
    verdict = cons.compare_logs(ordered)
    equal = cons.logs_equal(verdict)
    facts.update({"log_comparison_source": verdict.get("source"),
                  "logs_equal": details["equal"] if equal is None else equal,
                  "leader_log_records": details["leader"]["records"],
                  "ts_inversions": details["leader"]["ts_inversions"],
                  "ts_ties": details["leader"]["ts_ties"]})
    for row in rows:
        d = details["followers"][paths[row["follower"]]]
        row.update({f"log_{k}": d[k] for k in ("records", "missing", "extra", "conflicting",
                                                "duplicates", "out_of_order")})
        row["arrival_order_divergent_keys"] = d["arrival_order_divergent_keys"]
        row["logs_equal"] = d["equal"] if equal is None else bool(equal and d["equal"])


# --- the study --------------------------------------------------------------------------------


def run_study(args: argparse.Namespace) -> dict[str, str]:
    """Every quorum in turn, then the outputs; returns output name -> path."""
    started = time.perf_counter()
    own_data = args.local and not args.data_dir
    data_dir = tempfile.mkdtemp(prefix="quorum-study-") if own_data else args.data_dir
    workdir = tempfile.mkdtemp(prefix="quorum-study-logs-")
    cluster = make_cluster(args, data_dir)
    all_writes: list[dict] = []
    all_rows: list[dict] = []
    info: list[dict] = []
    bar = tqdm(total=args.writes * len(args.quorums), unit="write", desc="quorum study",
               disable=args.no_progress, file=sys.stderr)
    try:
        for quorum in args.quorums:
            q_started = time.perf_counter()
            bar.set_postfix_str(f"k={quorum} starting leader")
            cluster.configure(quorum)
            writes, rows, facts = asyncio.run(measure_quorum(cluster, args, quorum, bar))
            add_log_comparison(cluster, rows, facts, os.path.join(workdir, f"k{quorum}"))
            facts["wall_s"] = time.perf_counter() - q_started
            all_writes += writes
            all_rows += rows
            info.append(facts)
            tqdm.write(f"k={quorum}: measured {facts['leader_id']} ({cluster.endpoints.leader}) as the leader",
                       file=sys.stderr)
    finally:
        bar.close()
        cluster.close()
        shutil.rmtree(workdir, ignore_errors=True)
        if own_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    meta = study_meta(args, cluster, info, time.perf_counter() - started)
    return write_outputs(pd.DataFrame(all_writes), pd.DataFrame(all_rows), info, meta, args.output)


def study_meta(args: argparse.Namespace, cluster: Cluster, info: list[dict], wall_s: float) -> dict[str, Any]:
    return {
        "cluster": cluster.description, "writes": args.writes, "concurrency": args.concurrency,
        "keys": args.keys, "quorums": list(args.quorums), "min_delay_ms": args.min_delay,
        "max_delay_ms": args.max_delay, "followers": FOLLOWER_COUNT, "seed": args.seed,
        "poll_interval_s": args.poll_interval, "converge_timeout_s": args.converge_timeout,
        "fsync": info[0].get("fsync") if info else None,
        "log_comparison_source": info[0].get("log_comparison_source") if info else None,
        "leader_id": cluster.endpoints.leader_id, "leader_url": cluster.endpoints.leader, "wall_s": wall_s,
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> dict[str, str]:
    args = parse_args(argv)
    started = time.perf_counter()
    paths = run_study(args)
    print(f"study done in {time.perf_counter() - started:.1f} s; report: {paths['report']}")
    return paths


def cli() -> None:
    run_cli(main, "use --local")


if __name__ == "__main__":
    cli()
