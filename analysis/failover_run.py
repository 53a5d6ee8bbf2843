"""One failover run on the local six-process cluster: writes flowing, the leader SIGKILLed,
the supervisor starting it again, and everything recorded.

The cluster is ``node.cluster.LocalCluster`` with automatic failover on a shared etcd (its own
``ETCD_PREFIX`` and data directory per run, so runs never see each other's leader key or
logs) and the supervisor's restart policy, which starts the killed node again after
``restart_delay_s``, as a process manager would. Ten writers keep writing over ten keys
through ``node.client`` (the seed's workload, as a stream), while a watcher polls every
node's /health and etcd's leader key, so each change of leader is seen when it happens.
After the failover the writers stop, the cluster converges, and the new leader's log and
every rollback file are read for the history check (``analysis.failover_model``).
"""

from __future__ import annotations

import asyncio
import glob
import os
import random
import time
from dataclasses import dataclass, field

from tornado.simple_httpclient import SimpleAsyncHTTPClient

from analysis import NODE_NAMES
from analysis.cluster import LOG_FILE_NAME
from analysis.failover_model import OUTCOMES
from node.client import Client
from node.client_transport import send
from node.cluster import HOST, LocalCluster
from node.etcd import EtcdClient, EtcdError
from node.log import read_log
from node.logtool import compare_logs, load
from node.rollback import ROLLBACK_DIR
from node.supervisor import Policy

OLD_LEADER = "leader"
WATCH_INTERVAL_S = 0.05
HEALTH_TIMEOUT_S = 0.5
# While no leader is reachable a write gives up after this long ("refused": never sent) and
# its writer waits a little before the next one, like a client that backs off.
LEADER_WAIT_S = 0.5
UNREACHABLE_BACKOFF_S = 0.1
SETTLE_TIMEOUT_S = 60.0
SECRET = "failover-study"


@dataclass(frozen=True)
class RunSettings:
    quorum: int
    ttl_ms: int
    repeat: int
    before_s: float = 2.0  # writes before the kill
    after_s: float = 2.0  # writes after the new leader's first acknowledgment
    restart_delay_s: float = 1.0
    failover_timeout_s: float = 30.0  # give up waiting for an acknowledging new leader after this
    concurrency: int = 10
    keys: int = 10
    min_delay_ms: int = 0
    max_delay_ms: int = 100
    write_timeout_ms: int = 3000
    seed: int = 1

    @property
    def client_timeout_s(self) -> float:
        """Above the node's WRITE_TIMEOUT, so a quorum never reached comes back as its 504."""
        return self.write_timeout_ms / 1000 + 2.0


@dataclass
class RunRecord:
    """Everything one run observed; times are ``time.monotonic()`` values."""

    settings: RunSettings
    writes: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    started_at: float = 0.0
    kill_at: float = 0.0
    new_leader: str | None = None
    new_term: int | None = None
    log: dict = field(default_factory=dict)
    rolled_back: list = field(default_factory=list)
    logs_equal: bool = False
    replicas: dict = field(default_factory=dict)
    last_failover: dict | None = None
    wall_s: float = 0.0


def cluster_env(settings: RunSettings, etcd_endpoints: list[str], prefix: str) -> dict:
    """The nodes' settings: this run's W, TTL and etcd prefix on top of the caller's environment."""
    return dict(os.environ, ETCD_ENDPOINTS=",".join(etcd_endpoints), ETCD_PREFIX=prefix, FAILOVER="auto",
                LEADER_TTL=str(settings.ttl_ms), WRITE_QUORUM=str(settings.quorum),
                MIN_DELAY=str(settings.min_delay_ms), MAX_DELAY=str(settings.max_delay_ms),
                WRITE_TIMEOUT=str(settings.write_timeout_ms), DELAY_SEED=str(settings.seed),
                REPLICATION_SECRET=SECRET, LOG_LEVEL="ERROR")


def make_cluster(settings: RunSettings, data_dir: str, base_port: int, etcd_endpoints: list[str], prefix: str,
                 events: list[dict], policy: Policy | None = None) -> LocalCluster:
    """The six nodes, supervised with a restart after ``restart_delay_s`` unless ``policy`` says otherwise."""
    def report(line: str) -> None:
        events.append({"at": time.monotonic(), "node": line.split(" ", 1)[0], "event": "supervisor", "term": None,
                       "detail": line})

    policy = policy or Policy(restart=True, restart_delay=settings.restart_delay_s)
    return LocalCluster(data_dir, base_port, env=cluster_env(settings, etcd_endpoints, prefix), quiet=True,
                        policy=policy, report=report)


# --- watching ---------------------------------------------------------------------------------


class Watcher:
    """Polls every node's /health and etcd's leader key; keeps one event per change seen:
    ``leads`` (a node answers as leader of a term), ``follows``, ``down`` (no answer), and
    ``key`` (the leader key's holder, None once it expired)."""

    def __init__(self, cluster: LocalCluster, etcd_endpoints: list[str], prefix: str, events: list[dict]) -> None:
        self.addresses = {name: f"{HOST}:{cluster.port(name)}" for name in cluster.envs}
        self.etcd = EtcdClient(etcd_endpoints, timeout=1.0)
        self.key = f"{prefix}/leader"
        self.events = events
        self.seen: dict[str, tuple] = {}
        self.http = SimpleAsyncHTTPClient(force_instance=True, max_clients=len(self.addresses) + 2)
        self._stop = asyncio.Event()

    async def run(self) -> None:
        try:
            while not self._stop.is_set():
                await asyncio.gather(self._poll_key(), *(self._poll(name) for name in self.addresses))
                try:
                    await asyncio.wait_for(self._stop.wait(), WATCH_INTERVAL_S)
                except asyncio.TimeoutError:
                    pass
        finally:
            self.http.close()
            self.etcd.close()

    def stop(self) -> None:
        self._stop.set()

    def leader_of(self, term_above: int) -> tuple[str, int] | None:
        """A node seen leading a term above ``term_above``, with that term (the latest such)."""
        leading = [(state[1], name) for name, state in self.seen.items() if state[0] == "leads" and state[1] > term_above]
        return (max(leading)[1], max(leading)[0]) if leading else None

    def _note(self, name: str, state: tuple) -> None:
        if self.seen.get(name) != state:
            self.seen[name] = state
            self.events.append({"at": time.monotonic(), "node": name, "event": state[0], "term": state[1],
                                "detail": state[2]})

    async def _poll(self, name: str) -> None:
        try:
            code, health = await send(self.http, self.addresses[name], "GET", "/health", None, HEALTH_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a node down or starting is no answer
            self._note(name, ("down", None, None))
            return
        if code != 200:
            self._note(name, ("down", None, f"HTTP {code}"))
            return
        role = "leads" if health.get("role") == "leader" else "follows"
        self._note(name, (role, health.get("term"), health.get("leader_id")))

    async def _poll_key(self) -> None:
        try:
            held = await self.etcd.get(self.key)
        except EtcdError:
            return
        self._note("etcd", ("key", None, held.text if held is not None else None))


# --- writing ----------------------------------------------------------------------------------


class Writers:
    """``concurrency`` writers sending unique values to keys drawn (seeded) from ``keys`` names,
    until told to stop; every write becomes one row with its outcome as node.client decided."""

    def __init__(self, cluster: LocalCluster, settings: RunSettings, rows: list[dict]) -> None:
        self.settings = settings
        self.client = Client([f"{HOST}:{cluster.port(name)}" for name in cluster.envs], timeout=settings.client_timeout_s,
                             leader_wait=LEADER_WAIT_S, max_clients=settings.concurrency + 8)
        self.rng = random.Random(f"{settings.seed}:{settings.quorum}:{settings.ttl_ms}:{settings.repeat}")
        self.names = [f"key-{i:02d}" for i in range(settings.keys)]
        self.rows = rows
        self.next = 0
        self.stopping = False

    async def run(self) -> None:
        try:
            await asyncio.gather(*(self._writer() for _ in range(self.settings.concurrency)))
        finally:
            self.client.close()

    async def _writer(self) -> None:
        while not self.stopping:
            index, self.next = self.next, self.next + 1
            key, value = self.rng.choice(self.names), f"W{self.settings.quorum}-w{index:05d}"
            started = time.monotonic()
            result = await self.client.write(key, value)
            self.rows.append({"write": index, "key": key, "value": value, "start_at": started, "end_at": time.monotonic(),
                              "outcome": OUTCOMES[result.status], "term": result.term if result.status == "ok" else None,
                              "seq": result.seq if result.status == "ok" else None, "code": result.code,
                              "node": result.leader, "error": result.error})
            if result.status != "ok" and result.code is None:
                await asyncio.sleep(UNREACHABLE_BACKOFF_S)

    def acknowledged_since(self, since: float, term_above: int = 0) -> list[dict]:
        return [r for r in self.rows if r["outcome"] == "acknowledged" and r["end_at"] >= since
                and (r["term"] or 0) > term_above]


async def until(condition, timeout: float, what: str, interval: float = WATCH_INTERVAL_S) -> None:
    """Poll ``condition`` (a plain function) until true; RuntimeError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(interval)


# --- one run ----------------------------------------------------------------------------------


async def failover_run(settings: RunSettings, etcd_endpoints: list[str], data_dir: str, base_port: int) -> RunRecord:
    """Start, write, kill the leader, wait for an acknowledging new leader, settle, collect."""
    record = RunRecord(settings)
    began = time.monotonic()
    prefix = f"/failover-study/{os.path.basename(data_dir)}"
    cluster = make_cluster(settings, data_dir, base_port, etcd_endpoints, prefix, record.events)
    await asyncio.to_thread(cluster.start)
    cluster.supervise_in_background()
    watcher = Watcher(cluster, etcd_endpoints, prefix, record.events)
    watching = asyncio.ensure_future(watcher.run())
    try:
        await until(lambda: watcher.seen.get("etcd", (None, None, None))[2] == OLD_LEADER and all(
            (watcher.seen.get(n) or ("down",))[0] != "down" for n in NODE_NAMES), 30, "the first leader takes the key")
        await write_through_the_failover(cluster, watcher, settings, record)
        await settle(cluster, watcher, record)
        collect(cluster, data_dir, record)
    finally:
        watcher.stop()
        await watching
        await asyncio.to_thread(cluster.stop)
    record.wall_s = time.monotonic() - began
    return record


async def write_through_the_failover(cluster: LocalCluster, watcher: Watcher, settings: RunSettings,
                                     record: RunRecord) -> None:
    writers = Writers(cluster, settings, record.writes)
    record.started_at = time.monotonic()
    writing = asyncio.ensure_future(writers.run())
    try:
        await asyncio.sleep(settings.before_s)
        await until(lambda: writers.acknowledged_since(record.started_at), 30, "the first leader acknowledges writes")
        old_pid = cluster.pid(OLD_LEADER)
        await asyncio.to_thread(cluster.kill, OLD_LEADER)
        record.kill_at = time.monotonic()  # the process has exited: it sends nothing more
        record.events.append({"at": record.kill_at, "node": OLD_LEADER, "event": "killed", "term": None,
                              "detail": "SIGKILL"})
        restarting = asyncio.ensure_future(asyncio.to_thread(cluster.wait_restarted, OLD_LEADER, old_pid,
                                                             settings.failover_timeout_s))
        await wait_for_new_acknowledgments(watcher, writers, settings, record)
    finally:
        writers.stopping = True
        await writing
    await restarting  # the supervisor's restart, before the cluster may settle


async def wait_for_new_acknowledgments(watcher: Watcher, writers: Writers, settings: RunSettings,
                                       record: RunRecord) -> None:
    """Until a new term's leader has acknowledged writes for ``after_s``, or the timeout."""
    deadline = record.kill_at + settings.failover_timeout_s
    while time.monotonic() < deadline:
        found = watcher.leader_of(term_above=1)
        acked = writers.acknowledged_since(record.kill_at, term_above=1)
        if found and acked:
            record.new_leader, record.new_term = found
            first = min(r["end_at"] for r in acked)
            if time.monotonic() >= first + settings.after_s:
                return
        await asyncio.sleep(WATCH_INTERVAL_S)
    found = watcher.leader_of(term_above=1)
    if found:
        record.new_leader, record.new_term = found


async def settle(cluster: LocalCluster, watcher: Watcher, record: RunRecord) -> None:
    """Until every node follows the new leader and holds what it holds (the replicas converge)."""
    if record.new_leader is None:
        return
    await until(lambda: all(watcher.seen.get(n, (None,))[:2] == ("follows", record.new_term)
                            for n in NODE_NAMES if n != record.new_leader), SETTLE_TIMEOUT_S,
                "every node follows the new leader")
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=len(NODE_NAMES) + 2)
    try:
        async def replicas() -> dict:
            answers = await asyncio.gather(*(send(client, f"{HOST}:{cluster.port(n)}", "GET", "/all", None, 5)
                                             for n in NODE_NAMES))
            return {n: answer for n, (_, answer) in zip(NODE_NAMES, answers)}

        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            record.replicas = await replicas()
            states = [(a.get("applied_seq"), a.get("data")) for a in record.replicas.values()]
            if all(s == states[0] for s in states) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        _, status = await send(client, f"{HOST}:{cluster.port(record.new_leader)}", "GET", "/status", None, 5)
        record.last_failover = (status.get("failover") or {}).get("last_failover")
    finally:
        client.close()


def collect(cluster: LocalCluster, data_dir: str, record: RunRecord) -> None:
    """The new leader's log, the six logs compared, and every entry of every rollback file."""
    paths = {name: os.path.join(data_dir, name, LOG_FILE_NAME) for name in cluster.envs}
    leader = record.new_leader or OLD_LEADER
    record.log = load(paths[leader])
    record.logs_equal = compare_logs([paths[leader]] + [p for n, p in paths.items() if n != leader])["equal"]
    files = glob.glob(os.path.join(data_dir, "*", ROLLBACK_DIR, "*.log"))
    record.rolled_back = [r.entry for path in files for r in read_log(path).records]


# --- a failover that cannot happen ------------------------------------------------------------


@dataclass
class Demonstration:
    """A leader killed with followers already down: what the survivors decided meanwhile."""

    quorum: int
    ttl_ms: int
    down: list[str]
    leaderless_s: float = 0.0  # from the key seen gone to the end of the watch, no node leading
    decisions: dict = field(default_factory=dict)  # survivor -> /status failover.last_decision
    any_leader: bool = False  # a node led a new term while the followers were down
    recovered_after_s: float | None = None  # from the downed followers' restart to a new leader


async def impossible_failover(settings: RunSettings, etcd_endpoints: list[str], data_dir: str, base_port: int,
                              down: list[str], hold_s: float) -> Demonstration:
    """Stop ``down`` followers, SIGKILL the leader, watch ``hold_s`` after the key is gone, then
    start the stopped followers again and time the failover that follows. Unsupervised: the
    study alone decides which node runs."""
    events: list[dict] = []
    prefix = f"/failover-study/{os.path.basename(data_dir)}"
    cluster = make_cluster(settings, data_dir, base_port, etcd_endpoints, prefix, events, Policy(restart=False))
    await asyncio.to_thread(cluster.start)
    watcher = Watcher(cluster, etcd_endpoints, prefix, events)
    watching = asyncio.ensure_future(watcher.run())
    shown = Demonstration(settings.quorum, settings.ttl_ms, list(down))
    try:
        await until(lambda: watcher.seen.get("etcd", (None, None, None))[2] == OLD_LEADER and all(
            (watcher.seen.get(n) or ("down",))[0] == "follows" and watcher.seen[n][1] == 1
            for n in NODE_NAMES if n != OLD_LEADER), 30, "every follower follows the first leader")
        for name in down:
            await asyncio.to_thread(cluster.kill, name)
        await asyncio.to_thread(cluster.kill, OLD_LEADER)
        await until(lambda: watcher.seen.get("etcd", (None, None, "?"))[2] is None, settings.failover_timeout_s,
                    "the leader key expires")
        free_at = time.monotonic()
        await asyncio.sleep(hold_s)
        shown.leaderless_s = time.monotonic() - free_at
        shown.any_leader = watcher.leader_of(term_above=1) is not None
        shown.decisions = await survivors_decisions(cluster, [n for n in NODE_NAMES if n not in down + [OLD_LEADER]])
        back = time.monotonic()
        for name in down:
            await asyncio.to_thread(cluster.restart, name)
        await until(lambda: watcher.leader_of(term_above=1) is not None, settings.failover_timeout_s,
                    "a leader once the followers are back")
        shown.recovered_after_s = time.monotonic() - back
    finally:
        watcher.stop()
        await watching
        await asyncio.to_thread(cluster.stop)
    return shown


async def survivors_decisions(cluster: LocalCluster, names: list[str]) -> dict[str, str]:
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=len(names) + 2)
    try:
        answers = await asyncio.gather(*(send(client, f"{HOST}:{cluster.port(n)}", "GET", "/status", None, 5)
                                         for n in names))
    finally:
        client.close()
    return {n: (answer.get("failover") or {}).get("last_decision") for n, (_, answer) in zip(names, answers)}
