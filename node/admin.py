"""Operator commands for a running cluster: who leads, promoting a follower, membership.

    python -m node.admin status                    # each node's role, term, leader and position
    python -m node.admin promote follower3         # make follower3 the leader of the next term
    python -m node.admin members                   # the membership in force
    python -m node.admin add follower6 follower6:8000   # a new node joins (as a learner first)
    python -m node.admin remove follower6          # sends to it stop; its data stays

By default the nodes are the Compose cluster's published ports (8000..8005 on 127.0.0.1, or
the ``LEADER_PORT``/``FOLLOWERn_PORT`` overrides); ``--base-port`` points at a local cluster
(``python -m node.cluster``), ``--url`` at one node. The secret is ``REPLICATION_SECRET``
(the Compose file's default when unset). Standard library only, like ``node.compose``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

from node.compose import DEFAULT_PORTS, PORT_VARS, SERVICES

COMPOSE_SECRET = "kvstore-replication-secret"
SECRET_HEADER = "X-Replication-Secret"


def node_urls(base_port: int | None, host: str) -> dict[str, str]:
    """Node id -> URL, for the Compose cluster's published ports or a local cluster's."""
    if base_port is not None:
        return {name: f"http://{host}:{base_port + i}" for i, name in enumerate(SERVICES)}
    return {name: f"http://{host}:{os.environ.get(PORT_VARS[name], DEFAULT_PORTS[name])}" for name in SERVICES}


def call(method: str, url: str, secret: str | None = None, timeout: float = 30.0, body: dict | None = None
         ) -> tuple[int, dict]:
    headers = {SECRET_HEADER: secret} if secret else {}
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    request = urllib.request.Request(url, method=method, headers=headers, data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def status(urls: dict[str, str]) -> int:
    print(f"{'node':<10} {'role':<9} {'term':>4}  {'leader':<10} {'applied':>8}  url")
    for name, url in urls.items():
        try:
            _, health = call("GET", url + "/health", timeout=2)
            _, info = call("GET", url + "/status", timeout=2)
        except OSError as exc:
            print(f"{name:<10} {'down':<9} {'':>4}  {'':<10} {'':>8}  {url}  ({exc})")
            continue
        print(f"{name:<10} {health['role']:<9} {health['term']:>4}  {str(health['leader_id']):<10} "
              f"{info.get('applied_seq', ''):>8}  {url}")
    return 0


def promote(node: str, url: str, secret: str) -> int:
    print(f"promoting {node} at {url} ...", flush=True)
    try:
        code, answer = call("POST", url + "/admin/promote", secret)
    except OSError as exc:
        print(f"cannot reach {node} at {url}: {exc}; is it running?", file=sys.stderr)
        return 1
    if code != 200:
        print(f"promotion refused (HTTP {code}): {answer.get('error', answer)}", file=sys.stderr)
        return 1
    print(f"{node} leads term {answer['term']} (deposed: {answer['deposed']}); promises from "
          f"{', '.join(answer['promises'])} ({answer['needed']} needed); {answer['fetched']} entries fetched, "
          f"{answer['restamped']} written again in the new term, {len(answer['holes'])} no-ops; the term starts at "
          f"seq {answer['term_start_seq']}; took {answer['took_ms']} ms")
    return 0


def leader_url(urls: dict[str, str]) -> str | None:
    """The URL of the node that says it leads (the highest term), or None."""
    best = None
    for url in urls.values():
        try:
            _, health = call("GET", url + "/health", timeout=2)
        except OSError:
            continue
        if health.get("role") == "leader" and (best is None or health["term"] > best[0]):
            best = (health["term"], url)
    return best[1] if best else None


def members(url: str, secret: str, change: dict | None) -> int:
    """Show the membership, or make one change on the leader at ``url``."""
    try:
        code, answer = call("POST" if change else "GET", url + "/admin/members", secret, body=change)
    except OSError as exc:
        print(f"cannot reach the leader at {url}: {exc}", file=sys.stderr)
        return 1
    if code != 200:
        print(f"membership change refused (HTTP {code}): {answer.get('error', answer)}", file=sys.stderr)
        return 1
    if change:
        print(f"done at seq {answer['seq']} ({answer['confirmations']} of {answer['quorum']} confirmations needed)")
    for member in answer["members"]:
        kind = "learner" if member["learner"] else ("leader" if member["node_id"] == answer["leader_id"] else "follower")
        print(f"{member['node_id']:<12} {member['address']:<24} {kind}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m node.admin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-port", type=int, help="a local cluster's first port (python -m node.cluster)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--url", help="the node's URL (overrides the port lookup)")
    parser.add_argument("--secret", default=os.environ.get("REPLICATION_SECRET", COMPOSE_SECRET),
                        help="REPLICATION_SECRET of the cluster (default: $REPLICATION_SECRET or the Compose default)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="each node's role, term and leader")
    promoting = commands.add_parser("promote", help="make a follower the leader of the next term")
    promoting.add_argument("node", help="node id, e.g. follower3")
    commands.add_parser("members", help="the membership in force")
    adding = commands.add_parser("add", help="a new node joins the cluster (a learner until caught up)")
    adding.add_argument("node", help="its node id, e.g. follower6")
    adding.add_argument("address", help="host:port where the others reach it, e.g. follower6:8000")
    removing = commands.add_parser("remove", help="a follower leaves the cluster (its data stays)")
    removing.add_argument("node", help="node id, e.g. follower6")
    args = parser.parse_args(argv)
    urls = node_urls(args.base_port, args.host)
    if args.command == "status":
        sys.exit(status(urls))
    if args.command in ("members", "add", "remove"):
        url = args.url or leader_url(urls)
        if url is None:
            print(f"no node answers as the leader ({', '.join(urls.values())}); give --url", file=sys.stderr)
            sys.exit(1)
        change = {"add": {"node_id": args.node, "address": args.address}} if args.command == "add" else \
            {"remove": args.node} if args.command == "remove" else None
        sys.exit(members(url, args.secret, change))
    if args.url is None and args.node not in urls:
        parser.error(f"unknown node {args.node!r}; nodes: {', '.join(urls)} (or give --url)")
    sys.exit(promote(args.node, args.url or urls[args.node], args.secret))


if __name__ == "__main__":
    main()
