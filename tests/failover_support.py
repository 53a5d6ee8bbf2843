"""What the failover tests ask of a cluster, local or Compose: anything with ``url(name)``
(``node.cluster.LocalCluster``, ``node.compose.Compose``) and the six node names."""

from __future__ import annotations

import os
import time

import pytest

from node.admin import call
from node.etcd_local import etcd_binary

NAMES = ("leader", "follower1", "follower2", "follower3", "follower4", "follower5")


def health(cluster, name) -> dict:
    """The node's /health, or {} while it does not answer."""
    try:
        return call("GET", cluster.url(name) + "/health", timeout=5)[1]
    except OSError:
        return {}


def failover_status(cluster, name) -> dict:
    return call("GET", cluster.url(name) + "/status", timeout=5)[1]["failover"]


def leader_now(cluster, among=NAMES) -> str | None:
    """The one node that answers as leader, or None (none, or more than one)."""
    found = [n for n in among if health(cluster, n).get("role") == "leader"]
    return found[0] if len(found) == 1 else None


def wait_until(condition, timeout, what, interval=0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(interval)


def states(cluster, names=NAMES) -> dict:
    return {n: call("GET", cluster.url(n) + "/all", timeout=5)[1] for n in names}


def converged(cluster, names=NAMES) -> bool:
    """Every node answers with the same data and applied seq."""
    try:
        found = states(cluster, names)
    except OSError:
        return False
    first = found[names[0]]
    return all(s["data"] == first["data"] and s["applied_seq"] == first["applied_seq"] for s in found.values())


def require_etcd(what: str) -> None:
    """Skip ``what`` without etcd on a workstation; fail it under CI=true (``make test``
    installs etcd-server, so its absence there is a broken setup, not a reason to skip)."""
    if etcd_binary() is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI=true and etcd is required for {what}; `make test` installs it (apt-get install etcd-server)")
        pytest.skip(f"etcd is not installed, needed for {what} (apt-get install etcd-server)")
