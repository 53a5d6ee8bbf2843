"""Node configuration, read once from environment variables and validated at start-up.

A wrong setting must stop the node before it serves anything, with one line that names the
variable, the value seen and what is allowed: a replica that silently runs with
``WRITE_QUORUM=0`` or ``MIN_DELAY > MAX_DELAY`` measures and promises the wrong thing.

    >>> cfg = load_config({"ROLE": "follower", "NODE_ID": "f1", "REPLICATION_SECRET": "example-secret",
    ...                    "PEERS": "leader=127.0.0.1:8000,f1=127.0.0.1:8001"})
    >>> cfg.port, cfg.followers
    (8001, ('127.0.0.1:8000',))
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

ROLES = ("leader", "follower")
FAILOVER_MODES = ("auto", "manual")
FSYNC_POLICIES = ("always", "batch", "off")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_BATCH_LINGER_US = 2000
# How long a read with ?min_seq= waits for this node to apply that seq: long enough for a
# follower to receive a write the leader just acknowledged (MAX_DELAY's default is 1000 ms),
# short enough that a client soon tries another node.
DEFAULT_READ_WAIT_MS = 1000
# etcd's defaults (--snapshot-count 10000, SnapshotCatchUpEntries 5000): at 3,000 writes/s a
# snapshot every few seconds, and a follower down for under about two seconds of writes heals
# from the log instead of needing a snapshot.
DEFAULT_SNAPSHOT_EVERY = 10_000
DEFAULT_RETAIN_ENTRIES = 5_000
MAX_READ_WAIT_MS = 60_000


class ConfigError(ValueError):
    """A setting is missing or invalid; the message is the one line shown to the operator."""


@dataclass(frozen=True)
class Config:
    role: str  # the role taken while no term is recorded (a new cluster); then the terms decide
    node_id: str
    host: str
    port: int
    data_dir: str
    fsync: str
    max_body_bytes: int
    replication_secret: str
    log_level: str
    peers: tuple[tuple[str, str], ...] = ()  # (node id, host:port) of every node, this one included
    # Cluster-wide: every node may lead, so every node knows how.
    write_quorum: int = 1
    min_delay_ms: int = 0
    max_delay_ms: int = 0
    write_timeout_ms: int = 10_000
    delay_seed: int | None = None
    batch_linger_us: int = 0
    catchup_interval_ms: int = 2000
    read_wait_ms: int = 1000
    # Automatic failover (etcd as the coordinator); none without ETCD_ENDPOINTS.
    etcd_endpoints: tuple[str, ...] = ()
    failover: str = "manual"
    leader_ttl_ms: int = 3000
    priority: int = 0
    etcd_prefix: str = "/kvstore"
    # Log compaction: a snapshot every this many entries (0: never), and how many entries the
    # leader keeps after one for followers that lag (a follower further behind gets the snapshot).
    snapshot_every: int = 10_000
    retain_entries: int = 5_000

    @property
    def is_leader(self) -> bool:
        return self.role == "leader"

    @property
    def address(self) -> str:
        return dict(self.peers)[self.node_id]

    def address_of(self, node_id: str | None) -> str | None:
        return dict(self.peers).get(node_id) if node_id else None

    def others(self) -> list[tuple[str, str]]:
        """Every other node, as (id, address), in PEERS order."""
        return [(node_id, address) for node_id, address in self.peers if node_id != self.node_id]

    @property
    def followers(self) -> tuple[str, ...]:
        """Addresses of the nodes this one replicates to when it leads."""
        return tuple(address for _, address in self.others())


def _get(env: Mapping[str, str], name: str, default: str | None) -> str:
    value = env.get(name)
    if value is None or value.strip() == "":
        if default is None:
            raise ConfigError(f"{name} is not set; {_HINTS.get(name, 'it is required')}")
        return default
    return value.strip()


def _int(env: Mapping[str, str], name: str, default: int | None, lo: int, hi: int, why: str = "") -> int:
    raw = _get(env, name, None if default is None else str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer; allowed range {lo}..{hi}{why}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range {lo}..{hi}{why}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str | None, allowed: tuple[str, ...]) -> str:
    raw = _get(env, name, default)
    if raw not in allowed:
        raise ConfigError(f"{name}={raw!r} is not allowed; use one of {', '.join(allowed)}")
    return raw


def parse_address(name: str, raw: str) -> str:
    """Check one ``host:port`` address and return it unchanged."""
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{name}={raw!r} is not a host:port address (port 1..65535), e.g. follower1:8000")
    return raw


def _peers(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``PEERS=leader=leader:8000,follower1=follower1:8000,...``: every node's id and address."""
    raw = _get(env, "PEERS", None)
    peers = []
    for item in (part.strip() for part in raw.split(",") if part.strip()):
        node_id, sep, address = item.partition("=")
        if not sep or not node_id.strip():
            raise ConfigError(f"PEERS entry {item!r} is not id=host:port; e.g. PEERS=leader=leader:8000,"
                              f"follower1=follower1:8000")
        peers.append((node_id.strip(), parse_address("PEERS", address.strip())))
    ids = [node_id for node_id, _ in peers]
    addresses = [address for _, address in peers]
    for name, values in (("id", ids), ("address", addresses)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ConfigError(f"PEERS lists the {name} {twice[0]!r} twice; each node must appear once with its own address")
    if len(peers) < 2:
        raise ConfigError(f"PEERS={raw!r} lists {len(peers)} node(s); a cluster needs a leader and at least one follower")
    return tuple(peers)


def _secret(env: Mapping[str, str]) -> str:
    """The shared secret of the internal endpoints; the value itself never appears in a message."""
    secret = _get(env, "REPLICATION_SECRET", None)
    if not 8 <= len(secret) <= 256:
        raise ConfigError(f"REPLICATION_SECRET has {len(secret)} characters; use 8..256 "
                          f"(every node of a cluster needs the same value)")
    return secret


_HINTS = {
    "REPLICATION_SECRET": "every node needs the same REPLICATION_SECRET (8..256 characters), "
                          "e.g. REPLICATION_SECRET=$(openssl rand -hex 16)",
    "ROLE": "set ROLE=leader or ROLE=follower",
    "PEERS": "every node needs PEERS=id=host:port,... listing all nodes of the cluster, itself included, "
             "e.g. PEERS=leader=leader:8000,follower1=follower1:8000 (or, to join a running cluster, "
             "LEADER=host:port of one of its nodes)",
}


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Read and validate every setting; raise ConfigError naming the first bad one."""
    env = os.environ if env is None else env
    role = _choice(env, "ROLE", None, ROLES)
    node_id = _get(env, "NODE_ID", role)
    peers = _peers(env)
    addresses = dict(peers)
    if node_id not in addresses:
        raise ConfigError(f"NODE_ID={node_id!r} is not in PEERS (ids: {', '.join(addresses)}); "
                          f"give this node's id as PEERS lists it")
    default_port = int(addresses[node_id].rpartition(":")[2])
    return Config(
        role=role,
        node_id=node_id,
        host=_get(env, "HOST", "127.0.0.1"),
        port=_int(env, "PORT", default_port, 1, 65535),
        data_dir=_get(env, "DATA_DIR", os.path.join("data", node_id)),
        fsync=_choice(env, "FSYNC", "batch", FSYNC_POLICIES),
        max_body_bytes=_int(env, "MAX_BODY_BYTES", 1 << 20, 1024, 64 << 20),
        replication_secret=_secret(env),
        log_level=_choice(env, "LOG_LEVEL", "INFO", LOG_LEVELS),
        peers=peers,
        catchup_interval_ms=_int(env, "CATCHUP_INTERVAL", 2000, 50, 600_000, " ms"),
        read_wait_ms=_int(env, "READ_WAIT", DEFAULT_READ_WAIT_MS, 0, MAX_READ_WAIT_MS, " ms"),
        snapshot_every=_int(env, "SNAPSHOT_EVERY", DEFAULT_SNAPSHOT_EVERY, 0, 100_000_000,
                            " entries between snapshots (0: never)"),
        retain_entries=_int(env, "RETAIN_ENTRIES", DEFAULT_RETAIN_ENTRIES, 0, 100_000_000,
                            " entries kept after a snapshot for lagging followers"),
        **_replication_settings(env, len(peers) - 1),
        **_failover_settings(env),
    )


def _endpoint(raw: str) -> str:
    url = raw if "://" in raw else f"http://{raw}"
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https"):
        raise ConfigError(f"ETCD_ENDPOINTS entry {raw!r} is not an http(s) URL, e.g. http://etcd1:2379")
    parse_address("ETCD_ENDPOINTS", rest.rstrip("/"))
    return url.rstrip("/")


def _failover_settings(env: Mapping[str, str]) -> dict:
    """``ETCD_ENDPOINTS`` turns on the coordinator; ``FAILOVER`` says whether it may promote."""
    raw = env.get("ETCD_ENDPOINTS", "").strip()
    endpoints = tuple(_endpoint(part.strip()) for part in raw.split(",") if part.strip())
    mode = _choice(env, "FAILOVER", "auto" if endpoints else "manual", FAILOVER_MODES)
    if mode == "auto" and not endpoints:
        raise ConfigError("FAILOVER=auto needs ETCD_ENDPOINTS (e.g. http://etcd1:2379,http://etcd2:2379); "
                          "without a coordinator failover is manual")
    ttl = _int(env, "LEADER_TTL", 3000, 2000, 600_000, " ms (etcd's shortest lease is 2 s)")
    if ttl % 1000:
        raise ConfigError(f"LEADER_TTL={ttl} is not a whole number of seconds; etcd leases count in seconds, "
                          f"e.g. LEADER_TTL=3000")
    return dict(etcd_endpoints=endpoints, failover=mode, leader_ttl_ms=ttl,
                priority=_int(env, "PRIORITY", 0, 0, 1000, " (higher wins ties in the healthiest check)"),
                etcd_prefix=_get(env, "ETCD_PREFIX", "/kvstore").rstrip("/") or "/kvstore")


def _replication_settings(env: Mapping[str, str], n: int) -> dict:
    """What a node needs to lead: every node may be promoted, so every node validates these."""
    quorum = _int(env, "WRITE_QUORUM", min(2, n), 1, n, f" (PEERS lists {n} followers besides the leader)")
    min_delay = _int(env, "MIN_DELAY", 0, 0, 600_000, " ms")
    max_delay = _int(env, "MAX_DELAY", max(1000, min_delay), 0, 600_000, " ms")
    if max_delay < min_delay:
        raise ConfigError(f"MAX_DELAY={max_delay} is below MIN_DELAY={min_delay}; need 0 <= MIN_DELAY <= MAX_DELAY")
    return dict(
        write_quorum=quorum,
        min_delay_ms=min_delay,
        max_delay_ms=max_delay,
        write_timeout_ms=_int(env, "WRITE_TIMEOUT", 10_000, 1, 3_600_000, " ms"),
        # Unset: fresh random delays each start. Set: the same sequence of draws, for repeatable studies.
        delay_seed=_int(env, "DELAY_SEED", None, 0, 2**63 - 1) if env.get("DELAY_SEED", "").strip() else None,
        # How long an idle follower channel may wait for more entries under load (0: never).
        batch_linger_us=_int(env, "BATCH_LINGER_US", DEFAULT_BATCH_LINGER_US, 0, 100_000, " µs"),
    )
