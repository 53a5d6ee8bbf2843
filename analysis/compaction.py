"""The compaction study: how a node's cost grows with its history, with and without log compaction.

    python -m analysis.compaction                                  # checkpoints 20,000 and 200,000 writes
    python -m analysis.compaction --checkpoints 2000,20000 --out /tmp/compaction
    make compaction-study

Two configurations in one run, one after the other, each on a fresh six-node cluster of local
processes (``node.cluster.LocalCluster``, MIN_DELAY=MAX_DELAY=0, the cluster's default
WRITE_QUORUM): "no compaction" (``SNAPSHOT_EVERY=0``: the log and the leader's entries in memory
grow forever) and "compaction" (the nodes' own defaults, SNAPSHOT_EVERY=10000 and
RETAIN_ENTRIES=5000, unless --snapshot-every / --retain-entries say otherwise). Values of 1 KiB
are written over 100 keys with a bounded number in flight; at each checkpoint the writes stop
and four costs are measured: the leader's resident memory (VmRSS), each node's data directory
in bytes, the leader's restart (SIGTERM until it leads again with its last_seq back), and the
time a follower whose data directory was deleted takes to hold the leader's last_seq again.

Results: compaction.csv (config, writes, metric, node, value), compaction.png and REPORT.md in
``analysis/results/compaction/``, with each metric's growth from the first to the last checkpoint
and whether the compacted configuration stays within 20%.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from analysis.cluster import make_client, request_json, run_cli
from analysis.compaction_report import write_outputs
from analysis.loadclient import LoadConnection, RequestFailed
from node.cluster import HOST, LocalCluster

DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "compaction")
DEFAULT_CHECKPOINTS = (20_000, 200_000)
QUICK_CHECKPOINTS = (2_000, 20_000)
# Below the blocks the tests' free_port_block() hands out (20000 and up).
DEFAULT_BASE_PORT = 18600
WIPED = "follower5"
NO_COMPACTION, COMPACTION = "no compaction", "compaction"
# Settings the study decides; inherited from the caller's shell they would change what is measured.
STUDY_VARS = ("SNAPSHOT_EVERY", "RETAIN_ENTRIES", "WRITE_QUORUM", "MIN_DELAY", "MAX_DELAY", "DELAY_SEED",
              "ETCD_ENDPOINTS", "FAILOVER", "LOG_LEVEL")
JSON_HEADERS = {"Content-Type": "application/json"}
POLL_S = 0.1


@dataclass(frozen=True)
class StudyConfig:
    """One configuration: its name in the outputs and the node settings that make it."""

    name: str
    settings: dict[str, str]


def parse_checkpoints(raw: str) -> tuple[int, ...]:
    """``"20000,200000"`` -> (20000, 200000): at least two totals, increasing."""
    try:
        points = tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a comma-separated list of write counts") from None
    if len(points) < 2 or points[0] < 1 or any(b <= a for a, b in zip(points, points[1:])):
        raise argparse.ArgumentTypeError(f"{raw!r}: give at least two increasing counts >= 1, e.g. 20000,200000")
    return points


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analysis.compaction", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", type=parse_checkpoints, default=None, metavar="N1,N2",
                   help="total writes at which to measure (default: 20000,200000)")
    p.add_argument("--quick", action="store_true", help="checkpoints 2000,20000: a tenth of the writes")
    p.add_argument("--out", default=DEFAULT_OUTPUT, help="output directory (default: analysis/results/compaction/)")
    p.add_argument("--snapshot-every", type=int, default=None, metavar="N",
                   help="SNAPSHOT_EVERY of the compacted configuration (default: unset, the nodes' default)")
    p.add_argument("--retain-entries", type=int, default=None, metavar="N",
                   help="RETAIN_ENTRIES of the compacted configuration (default: unset, the nodes' default)")
    w = p.add_argument_group("load")
    w.add_argument("--concurrency", type=int, default=32, help="writes in flight (default: %(default)s)")
    w.add_argument("--keys", type=int, default=100, help="keys written (default: %(default)s)")
    w.add_argument("--value-bytes", type=int, default=1024, help="size of each value (default: %(default)s)")
    w.add_argument("--max-errors", type=int, default=10, help="failed writes tolerated per configuration")
    w.add_argument("--progress-every", type=float, default=5.0, metavar="S", help="seconds between progress lines")
    t = p.add_argument_group("bounds (seconds)")
    t.add_argument("--start-timeout", type=float, default=60.0, help="a node answers /health (default: %(default)g)")
    t.add_argument("--write-timeout", type=float, default=3600.0,
                   help="the writes up to one checkpoint (default: %(default)g)")
    t.add_argument("--sync-timeout", type=float, default=300.0,
                   help="followers catch up; the wiped follower matches the leader (default: %(default)g)")
    t.add_argument("--restart-timeout", type=float, default=300.0,
                   help="the restarted leader leads with its last_seq back (default: %(default)g)")
    n = p.add_argument_group("nodes")
    n.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT, help="leader port; followers the next five")
    n.add_argument("--work-dir", help="where the data directories go (default: a temporary one, removed afterwards)")
    n.add_argument("--node-log-level", default="ERROR", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    args.checkpoints = args.checkpoints or (QUICK_CHECKPOINTS if args.quick else DEFAULT_CHECKPOINTS)
    check_args(p, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse what would make the run meaningless, before any cluster starts."""
    for name in ("concurrency", "keys", "value_bytes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("snapshot_every", "retain_entries"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if min(args.max_errors, args.progress_every) < 0:
        parser.error("--max-errors and --progress-every must not be negative")


def study_configs(args: argparse.Namespace) -> list[StudyConfig]:
    """No compaction first, then the compacted one with only what the flags set."""
    compacted = {name: str(value) for name, value in
                 (("SNAPSHOT_EVERY", args.snapshot_every), ("RETAIN_ENTRIES", args.retain_entries)) if value is not None}
    return [StudyConfig(NO_COMPACTION, {"SNAPSHOT_EVERY": "0"}), StudyConfig(COMPACTION, compacted)]


def node_env(config: StudyConfig, log_level: str, base: dict | None = None) -> dict:
    """The caller's environment without the study's variables, then the study's settings."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in STUDY_VARS}
    return {**env, "MIN_DELAY": "0", "MAX_DELAY": "0", "LOG_LEVEL": log_level, **config.settings}


def node_code() -> dict[str, str]:
    """Which node code ran: the commit, how many of node/'s files differ from it, and a hash of
    node/**/*.py, taken at the start and the end; nodes started between two edits of the tree
    would mix builds, and the report says so."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha1()
    for path in sorted(glob.glob(os.path.join(root, "node", "**", "*.py"), recursive=True)):
        with open(path, "rb") as f:
            digest.update(path.encode() + f.read())

    def git(*words: str) -> str:
        try:
            return subprocess.run(["git", "-C", root, *words], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "node")
    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown", "hash": digest.hexdigest()[:12],
            "modified": str(len(changed.splitlines()))}


def say(line: str) -> None:
    print(f"compaction: {line}", file=sys.stderr, flush=True)


# --- what is measured -------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line: is pid {pid} a running process?")


def dir_bytes(path: str) -> int:
    """Sum of the sizes of every file under ``path``; a file removed meanwhile (a snapshot being
    pruned) counts as gone."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


def snapshot_files(path: str) -> int:
    """Files under DATA_DIR/snapshots/: the sign that the node really compacted."""
    return sum(len(files) for _, _, files in os.walk(os.path.join(path, "snapshots")))


# --- the load ---------------------------------------------------------------------------------


@dataclass
class Load:
    """The writes of one configuration, across its checkpoints; shared by the writers."""

    keys: int
    value_bytes: int
    max_errors: int
    claimed: int = 0  # writes acknowledged or in flight
    done: int = 0  # writes acknowledged
    serial: int = 0  # numbers every attempt, so each value is unique
    errors: int = 0
    first_error: str | None = None

    def body(self, n: int) -> bytes:
        value = f"{n:010d}".ljust(self.value_bytes, "x")[: self.value_bytes]
        return b'{"key": "key-%03d", "value": "%s"}' % (n % self.keys, value.encode())


async def writer(conn: LoadConnection, load: Load, target: int, deadline: float, label: str) -> None:
    """Writes back to back until ``target`` are acknowledged; a failed write is replaced by a
    new one, at most ``max_errors`` times."""
    while load.claimed < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{label}: {load.done:,} of {target:,} writes acknowledged when --write-timeout ran out")
        load.claimed += 1
        load.serial += 1
        try:
            status, answer = await conn.request("POST", "/write", load.body(load.serial), JSON_HEADERS)
            error = None if status == 200 else f"HTTP {status}: {answer[:200].decode(errors='replace')}"
        except RequestFailed as exc:
            error = str(exc)
        if error is None:
            load.done += 1
            continue
        load.claimed -= 1
        load.errors += 1
        load.first_error = load.first_error or error
        if load.errors > load.max_errors:
            raise RuntimeError(f"{label}: {load.errors} writes failed (--max-errors {load.max_errors}); "
                               f"first: {load.first_error}")


async def report_progress(load: Load, target: int, every: float, label: str, stop: asyncio.Event) -> None:
    """A line every ``every`` seconds: writes done, the rate since the last line and since the
    last checkpoint."""
    began = last = time.monotonic()
    start = before = load.done
    while every > 0 and not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every)
        except asyncio.TimeoutError:
            now = time.monotonic()
            say(f"{label}: {load.done:,}/{target:,} writes, {(load.done - before) / (now - last):,.0f}/s "
                f"({(load.done - start) / (now - began):,.0f}/s since the last checkpoint), {load.errors} failed")
            before, last = load.done, now


async def write_until(port: int, load: Load, target: int, args: argparse.Namespace, label: str) -> float:
    """Writes until ``target`` in total are acknowledged; returns the writes per second."""
    start_done, began = load.done, time.monotonic()
    deadline = began + args.write_timeout
    conns = [LoadConnection(HOST, port, timeout=30.0) for _ in range(args.concurrency)]
    stop = asyncio.Event()
    progress = asyncio.ensure_future(report_progress(load, target, args.progress_every, label, stop))
    tasks = [asyncio.ensure_future(writer(conn, load, target, deadline, label)) for conn in conns]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        stop.set()
        await progress
        for conn in conns:
            conn.close()
    return (load.done - start_done) / max(time.monotonic() - began, 1e-9)


# --- one checkpoint ---------------------------------------------------------------------------


async def status_of(http, cluster: LocalCluster, name: str) -> dict | None:
    code, answer = await request_json(http, f"{cluster.url(name)}/status", timeout=5.0)
    return answer if code == 200 else None


async def poll(check, timeout: float, what: str, progress=None, every: float = 5.0) -> float:
    """Await ``check()`` until it returns true; the seconds it took. RuntimeError naming
    ``what`` after ``timeout``; ``progress()`` gives a line printed every ``every`` seconds."""
    began = time.monotonic()
    next_line = began + every
    while not await check():
        now = time.monotonic()
        if now - began > timeout:
            raise RuntimeError(f"{what}: not within {timeout:g} s" + (f" ({progress()})" if progress else ""))
        if progress and every > 0 and now >= next_line:
            say(f"{what}: {progress()}")
            next_line = now + every
        await asyncio.sleep(POLL_S)
    return time.monotonic() - began


async def followers_caught_up(http, cluster: LocalCluster, last_seq: int, args: argparse.Namespace) -> None:
    """Until every follower applied ``last_seq``: a data directory is measured when whole."""
    behind: dict[str, object] = {}

    async def check() -> bool:
        for name in list(cluster.envs)[1:]:
            status = await status_of(http, cluster, name)
            behind[name] = status and status.get("applied_seq")
        return all(seq == last_seq for seq in behind.values())

    await poll(check, args.sync_timeout, f"followers apply the leader's last_seq {last_seq}",
               lambda: f"applied: {behind}", args.progress_every)


async def restart(cluster: LocalCluster, name: str, timeout: float) -> None:
    """``LocalCluster.restart`` with the node's name in the error: its own names only the port."""
    try:
        await asyncio.to_thread(cluster.restart, name, timeout)
    except RuntimeError as exc:
        raise RuntimeError(f"{name} did not come back after its restart: {exc}") from None


async def restart_leader(http, cluster: LocalCluster, last_seq: int, args: argparse.Namespace) -> float:
    """SIGTERM, start again, until /status says it leads with ``last_seq``: the wall time."""
    seen: dict = {}

    async def check() -> bool:
        seen.update(await status_of(http, cluster, "leader") or {"role": None})
        return seen.get("role") == "leader" and seen.get("last_seq") == last_seq

    began = time.monotonic()
    await restart(cluster, "leader", args.restart_timeout)
    await poll(check, max(args.restart_timeout - (time.monotonic() - began), 1.0),
               f"the restarted leader leads with last_seq {last_seq}",
               lambda: f"role {seen.get('role')}, last_seq {seen.get('last_seq')}", args.progress_every)
    return time.monotonic() - began


async def resync_wiped(http, cluster: LocalCluster, last_seq: int, args: argparse.Namespace) -> float:
    """Stop the follower, delete its DATA_DIR, start it, until it applied ``last_seq``."""
    applied: dict = {}

    async def check() -> bool:
        applied["seq"] = (await status_of(http, cluster, WIPED) or {}).get("applied_seq")
        return applied["seq"] == last_seq

    await asyncio.to_thread(cluster.kill, WIPED, signal.SIGTERM)
    shutil.rmtree(cluster.envs[WIPED]["DATA_DIR"])
    began = time.monotonic()
    await restart(cluster, WIPED, args.start_timeout)
    await poll(check, max(args.sync_timeout - (time.monotonic() - began), 1.0),
               f"wiped {WIPED} applies the leader's last_seq {last_seq}",
               lambda: f"applied_seq {applied.get('seq')}", args.progress_every)
    return time.monotonic() - began


async def measure_checkpoint(http, cluster: LocalCluster, args: argparse.Namespace, label: str) -> list[tuple]:
    """(metric, node, value) of one checkpoint, the writes stopped: memory and disk first, then
    the restart and the resync, which change what they measure."""
    status = await status_of(http, cluster, "leader")
    if not status or status.get("role") != "leader":
        raise RuntimeError(f"{label}: the leader does not answer /status as leader: {status}")
    last_seq = int(status["last_seq"])
    await followers_caught_up(http, cluster, last_seq, args)
    rss = rss_bytes(cluster.pid("leader"))
    sizes = {name: dir_bytes(env["DATA_DIR"]) for name, env in cluster.envs.items()}
    rows = [("leader_last_seq", "leader", last_seq), ("leader_rss_bytes", "leader", rss)]
    rows += [("data_dir_bytes", name, size) for name, size in sizes.items()]
    rows += [("snapshot_files", name, snapshot_files(env["DATA_DIR"])) for name, env in cluster.envs.items()]
    say(f"{label}: leader VmRSS {rss / 2**20:.1f} MiB, data directories {sum(sizes.values()) / 2**20:.1f} MiB "
        f"together; restarting the leader")
    restart_s = await restart_leader(http, cluster, last_seq, args)
    # The same state in a fresh process: what it holds, apart from what the allocator kept.
    restarted_rss = rss_bytes(cluster.pid("leader"))
    say(f"{label}: leader back in {restart_s:.2f} s, VmRSS {restarted_rss / 2**20:.1f} MiB; wiping {WIPED}")
    resync_s = await resync_wiped(http, cluster, last_seq, args)
    say(f"{label}: wiped {WIPED} matched the leader in {resync_s:.2f} s")
    return rows + [("leader_restart_s", "leader", restart_s), ("leader_rss_restarted_bytes", "leader", restarted_rss),
                   ("follower_resync_s", WIPED, resync_s)]


# --- one configuration ------------------------------------------------------------------------


def start_cluster(config: StudyConfig, data_dir: str, args: argparse.Namespace) -> LocalCluster:
    cluster = LocalCluster(data_dir, args.base_port, env=node_env(config, args.node_log_level), quiet=True)
    try:
        return cluster.start(args.start_timeout)
    except RuntimeError as exc:
        raise RuntimeError(f"the cluster for {config.name!r} did not start: {exc}") from None


async def run_config(config: StudyConfig, data_dir: str, args: argparse.Namespace) -> tuple[list[dict], dict]:
    """A fresh cluster, the writes up to each checkpoint and the measurements there."""
    say(f"{config.name}: starting six nodes on ports {args.base_port}..{args.base_port + 5} "
        f"({' '.join(f'{k}={v}' for k, v in config.settings.items()) or 'the nodes default settings'})")
    cluster = await asyncio.to_thread(start_cluster, config, data_dir, args)
    http = make_client(16)
    load = Load(args.keys, args.value_bytes, args.max_errors)
    rows, began = [], time.monotonic()
    try:
        facts = {k: (await status_of(http, cluster, "leader") or {}).get(k) for k in ("write_quorum", "fsync")}
        for target in args.checkpoints:
            label = f"{config.name} @ {target:,}"
            rate = await write_until(cluster.port("leader"), load, target, args, label)
            say(f"{label}: {load.done:,} writes acknowledged ({rate:,.0f}/s); measuring")
            measured = [("write_rate_per_s", "leader", rate)] + await measure_checkpoint(http, cluster, args, label)
            rows += [{"config": config.name, "writes": target, "metric": m, "node": n, "value": v} for m, n, v in measured]
    finally:
        http.close()
        await asyncio.to_thread(cluster.stop)
    facts.update(wall_s=time.monotonic() - began, failed_writes=load.errors, settings=dict(config.settings))
    return rows, facts


def run_study(args: argparse.Namespace, command: str) -> dict[str, str]:
    """Both configurations, one after the other, then the outputs; output name -> path."""
    began, code, load_before = time.monotonic(), node_code(), os.getloadavg()
    work = args.work_dir or tempfile.mkdtemp(prefix="compaction-study-")
    rows, facts = [], {}
    try:
        for config in study_configs(args):
            data_dir = os.path.join(work, config.name.replace(" ", "-"))
            config_rows, facts[config.name] = asyncio.run(run_config(config, data_dir, args))
            rows += config_rows
            if not args.work_dir:
                shutil.rmtree(data_dir, ignore_errors=True)  # up to 1.4 GB at 200,000 writes
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    meta = {"command": command, "checkpoints": list(args.checkpoints), "concurrency": args.concurrency,
            "keys": args.keys, "value_bytes": args.value_bytes, "base_port": args.base_port, "configs": facts,
            "wiped": WIPED, "wall_s": time.monotonic() - began, "code": code, "code_after": node_code(),
            "loadavg": [load_before[0], os.getloadavg()[0]]}
    return write_outputs(rows, meta, args.out)


def main(argv: list[str] | None = None) -> dict[str, str]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    paths = run_study(args, shlex.join(["python", "-m", "analysis.compaction", *argv]))
    say(f"report: {paths['report']}")
    return paths


def cli() -> None:
    run_cli(main, "the study needs no Docker")


if __name__ == "__main__":
    cli()
