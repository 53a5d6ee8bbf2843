"""Node configuration, read once from environment variables and validated at start-up.

A wrong setting must stop the node before it serves anything, with one line that names the
variable, the value seen and what is allowed: a replica that silently runs with
``WRITE_QUORUM=0`` or ``MIN_DELAY > MAX_DELAY`` measures and promises the wrong thing.

    >>> cfg = load_config({"ROLE": "follower", "NODE_ID": "f1", "LEADER": "127.0.0.1:8000",
    ...                  "REPLICATION_SECRET": "example-secret"})
    >>> cfg.port
    8001
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

ROLES = ("leader", "follower")
FSYNC_POLICIES = ("always", "batch", "off")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_BATCH_LINGER_US = 2000
# How long a read with ?min_seq= waits for this node to apply that seq: long enough for a
# follower to receive a write the leader just acknowledged (MAX_DELAY's default is 1000 ms),
# short enough that a client soon tries another node.
DEFAULT_READ_WAIT_MS = 1000
MAX_READ_WAIT_MS = 60_000


class ConfigError(ValueError):
    """A setting is missing or invalid; the message is the one line shown to the operator."""


@dataclass(frozen=True)
class Config:
    role: str
    node_id: str
    host: str
    port: int
    data_dir: str
    fsync: str
    max_body_bytes: int
    replication_secret: str
    log_level: str
    read_wait_ms: int = DEFAULT_READ_WAIT_MS
    # Leader only.
    followers: tuple[str, ...] = ()
    write_quorum: int = 0
    min_delay_ms: int = 0
    max_delay_ms: int = 0
    write_timeout_ms: int = 0
    delay_seed: int | None = None
    batch_linger_us: int = 0
    # Follower only.
    leader: str = ""
    catchup_interval_ms: int = 0

    @property
    def is_leader(self) -> bool:
        return self.role == "leader"


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
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{name}={raw!r} is not a host:port address (port 1..65535), e.g. follower1:8000")
    return raw


def _addresses(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = _get(env, name, None)
    items = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not items:
        raise ConfigError(f"{name}={raw!r} lists no address; give comma-separated host:port entries")
    for item in items:
        parse_address(name, item)
    if len(set(items)) != len(items):
        raise ConfigError(f"{name}={raw!r} lists an address twice; each follower must appear once")
    return items


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
    "FOLLOWERS": "the leader needs FOLLOWERS=host:port,host:port,... (its followers)",
    "LEADER": "a follower needs LEADER=host:port (the leader's address)",
}


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Read and validate every setting; raise ConfigError naming the first bad one."""
    env = os.environ if env is None else env
    role = _choice(env, "ROLE", None, ROLES)
    node_id = _get(env, "NODE_ID", role)
    common = dict(
        role=role,
        node_id=node_id,
        host=_get(env, "HOST", "127.0.0.1"),
        port=_int(env, "PORT", 8000 if role == "leader" else 8001, 1, 65535),
        data_dir=_get(env, "DATA_DIR", os.path.join("data", node_id)),
        fsync=_choice(env, "FSYNC", "batch", FSYNC_POLICIES),
        max_body_bytes=_int(env, "MAX_BODY_BYTES", 1 << 20, 1024, 64 << 20),
        replication_secret=_secret(env),
        log_level=_choice(env, "LOG_LEVEL", "INFO", LOG_LEVELS),
        read_wait_ms=_int(env, "READ_WAIT", DEFAULT_READ_WAIT_MS, 0, MAX_READ_WAIT_MS, " ms"),
    )
    if role == "leader":
        return Config(**common, **_leader_settings(env))
    return Config(
        **common,
        leader=parse_address("LEADER", _get(env, "LEADER", None)),
        catchup_interval_ms=_int(env, "CATCHUP_INTERVAL", 2000, 50, 600_000),
    )


def _leader_settings(env: Mapping[str, str]) -> dict:
    followers = _addresses(env, "FOLLOWERS")
    n = len(followers)
    quorum = _int(env, "WRITE_QUORUM", min(2, n), 1, n, f" (number of followers in FOLLOWERS is {n})")
    min_delay = _int(env, "MIN_DELAY", 0, 0, 600_000, " ms")
    max_delay = _int(env, "MAX_DELAY", max(1000, min_delay), 0, 600_000, " ms")
    if max_delay < min_delay:
        raise ConfigError(f"MAX_DELAY={max_delay} is below MIN_DELAY={min_delay}; need 0 <= MIN_DELAY <= MAX_DELAY")
    return dict(
        followers=followers,
        write_quorum=quorum,
        min_delay_ms=min_delay,
        max_delay_ms=max_delay,
        write_timeout_ms=_int(env, "WRITE_TIMEOUT", 10_000, 1, 3_600_000, " ms"),
        # Unset: fresh random delays each start. Set: the same sequence of draws, for repeatable studies.
        delay_seed=_int(env, "DELAY_SEED", None, 0, 2**63 - 1) if env.get("DELAY_SEED", "").strip() else None,
        # How long an idle follower channel may wait for more entries under load (0: never).
        batch_linger_us=_int(env, "BATCH_LINGER_US", DEFAULT_BATCH_LINGER_US, 0, 100_000, " µs"),
    )
