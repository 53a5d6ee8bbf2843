"""etcd as the benchmark's yardstick: a six-member etcd 3.4 cluster as local processes.

This store at ``WRITE_QUORUM=3`` answers a write once the leader and three of its five
followers have it on disk: four of six copies synced. etcd (Raft) commits an entry once a
majority of its members, four of six, have appended it to their write-ahead log, and each
member fsyncs its WAL before it acknowledges (etcd 3.4 has no setting that skips it). So the
two promise the same durability, and ``analysis.bench --etcd`` compares them at equal clients
on the same machine in the same run.

The clients are the store's: the same closed loop, one keep-alive HTTP/1.1 connection per client
(``analysis.loadclient``), each write a ``POST /v3/kv/put`` to etcd's JSON gateway with
``{"key": base64(key), "value": base64(value)}``, key and value of the same sizes as the
store's writes. All writes go to the member that is Raft's leader when the cluster is ready
(found by ``POST /v3/maintenance/status`` on every member: its ``leader`` against the
``header.member_id`` of each). A follower would forward each proposal to the leader, one more
hop the store's writes do not take either, since they go to the store's leader. What is left is
etcd's own cost of the JSON API: the gateway inside the member turns each HTTP request into a
gRPC call to the same process, part of what an etcd JSON client pays.

The members are started and stopped by ``node.etcd_local`` (fresh ports, a fresh temporary
data directory per member, a new cluster token; SIGTERM followers first, SIGKILL after 10 s,
directories removed), the same code that starts the coordinator for the local cluster and the
tests. Needs ``etcd`` on PATH (Debian: ``apt-get install etcd-server``).
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
from collections.abc import Iterator

from analysis.redisref import yardstick_binary
from node.etcd_local import start_etcd

MEMBERS = 6
START_TIMEOUT_S = 30.0
NAMES = ["leader"] + [f"follower{i}" for i in range(1, MEMBERS)]


class EtcdMissing(RuntimeError):
    """No etcd to start."""


def etcd_binary() -> str:
    return yardstick_binary("etcd", "--etcd", "etcd-server", EtcdMissing)


def etcd_version() -> str:
    out = subprocess.run([etcd_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    return out.splitlines()[0].replace("etcd Version:", "etcd").strip() if out else "etcd (version unknown)"


def put_body(key: bytes, value: bytes) -> bytes:
    """The v3 JSON gateway's PutRequest: bytes fields travel base64-encoded."""
    return b'{"key":"%s","value":"%s"}' % (base64.b64encode(key), base64.b64encode(value))


@contextlib.contextmanager
def etcd_cluster() -> Iterator[tuple[int, dict[str, int]]]:
    """Six members in a temporary directory; yields the client port of the Raft leader and the
    pid of each member under the store's node names (the Raft leader is ``leader``)."""
    with start_etcd(MEMBERS, binary=etcd_binary(), timeout=START_TIMEOUT_S) as etcd:
        order = [etcd.leader] + [i for i in range(MEMBERS) if i != etcd.leader]
        yield etcd.client_ports[etcd.leader], {name: etcd.procs[i].pid for name, i in zip(NAMES, order)}
