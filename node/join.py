"""A new node joining a running cluster: its peers come from the cluster, not from ``PEERS``.

    ROLE=follower NODE_ID=follower6 PORT=8006 DATA_DIR=data/follower6 LEADER=127.0.0.1:8000 \\
        REPLICATION_SECRET=... python -m node

With ``LEADER`` (any node of the cluster, normally the leader; several, comma-separated, are
tried in turn) and no ``PEERS``, the node asks ``GET /admin/members`` there for the membership
in force and starts with it as its ``PEERS``,
itself added at ``ADVERTISE_ADDRESS`` (default ``HOST:PORT``) until ``POST /admin/members``
adds it for real. From then on the membership entries in its own log decide, as on every node.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from tornado.httpclient import HTTPClient, HTTPClientError

from node.config import ConfigError, parse_address
from node.peers import SECRET_HEADER

FETCH_TIMEOUT_S = 10.0


def joining(env: Mapping[str, str]) -> bool:
    return bool(env.get("LEADER", "").strip()) and not env.get("PEERS", "").strip()


def with_peers_from_cluster(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with ``PEERS`` filled in from the membership ``LEADER`` answers (blocking: called
    once at start-up, before the event loop runs). Raises ConfigError naming what failed."""
    addresses = [parse_address("LEADER", a.strip()) for a in env["LEADER"].split(",") if a.strip()]
    node_id = env.get("NODE_ID", "").strip()
    if not node_id:
        raise ConfigError("NODE_ID is not set; a node joining with LEADER needs its own id, e.g. NODE_ID=follower6")
    own = env.get("ADVERTISE_ADDRESS", "").strip() or \
        f"{env.get('HOST', '127.0.0.1').strip() or '127.0.0.1'}:{env.get('PORT', '').strip()}"
    own = parse_address("ADVERTISE_ADDRESS (or HOST:PORT)", own)
    members = _first_answer(addresses, env.get("REPLICATION_SECRET", ""))
    peers = [(m["node_id"], m["address"]) for m in members]
    if node_id not in dict(peers):
        peers.append((node_id, own))
    return {**env, "PEERS": ",".join(f"{n}={a}" for n, a in peers)}


def _first_answer(addresses: list[str], secret: str) -> list[dict]:
    """The membership from the first of ``addresses`` that answers (a restart after a failover
    finds the old leader gone)."""
    failures = []
    for address in addresses:
        try:
            return _fetch_members(address, secret)
        except ConfigError as exc:
            failures.append(str(exc))
    raise ConfigError("; ".join(failures))


def _fetch_members(leader: str, secret: str) -> list[dict]:
    client = HTTPClient()
    try:
        response = client.fetch(f"http://{leader}/admin/members", headers={SECRET_HEADER: secret},
                                request_timeout=FETCH_TIMEOUT_S, connect_timeout=FETCH_TIMEOUT_S)
        return json.loads(response.body)["members"]
    except HTTPClientError as exc:
        detail = exc.response.body[:200].decode(errors="replace") if exc.response is not None and exc.response.body \
            else str(exc)
        raise ConfigError(f"LEADER={leader} answered HTTP {exc.code} to GET /admin/members ({detail}); check "
                          f"REPLICATION_SECRET, it must be the cluster's") from None
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"LEADER={leader}: cannot read the cluster's membership ({type(exc).__name__}: {exc}); "
                          f"start the cluster first, or check LEADER") from None
    finally:
        client.close()
