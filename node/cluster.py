"""Run the leader and five followers as local processes: the cluster without Docker.

    WRITE_QUORUM=3 MIN_DELAY=0 MAX_DELAY=200 python -m node.cluster --data-dir /tmp/kv

Settings come from the same environment variables as a single node; ports are BASE..BASE+5
on 127.0.0.1. The six logs live under ``--data-dir``; starting again on the same directory
brings the data back and the leader's numbering goes on. Ctrl-C or SIGTERM stops all six.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request

FOLLOWER_COUNT = 5
# Settings that belong to the cluster layout, not to the user's environment.
LAYOUT_VARS = ("ROLE", "NODE_ID", "PORT", "HOST", "DATA_DIR", "FOLLOWERS", "LEADER")


def node_envs(data_dir: str, base_port: int, followers: int, env: dict) -> list[dict]:
    """Environment of each node: the user's settings plus this node's place in the cluster."""
    base = {k: v for k, v in env.items() if k not in LAYOUT_VARS}
    # One secret shared by the six nodes of this run, unless the user chose one.
    base.setdefault("REPLICATION_SECRET", secrets.token_hex(16))
    host = "127.0.0.1"
    follower_ports = [base_port + i for i in range(1, followers + 1)]
    leader = dict(base, ROLE="leader", NODE_ID="leader", HOST=host, PORT=str(base_port),
                  DATA_DIR=os.path.join(data_dir, "leader"),
                  FOLLOWERS=",".join(f"{host}:{p}" for p in follower_ports))
    envs = [leader]
    for i, port in enumerate(follower_ports, start=1):
        envs.append(dict(base, ROLE="follower", NODE_ID=f"follower{i}", HOST=host, PORT=str(port),
                         DATA_DIR=os.path.join(data_dir, f"follower{i}"), LEADER=f"{host}:{base_port}"))
    return envs


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node on port {port} exited with code {proc.returncode}; see its log above")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"node on port {port} not healthy after {timeout:.0f} s")


def check_ports_free(ports: list[int]) -> None:
    """Refuse to start on a port something already listens on: its /health would answer for a
    node that never came up (e.g. the Compose cluster publishes 8000..8005 on 127.0.0.1)."""
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                raise RuntimeError(f"port {port} on 127.0.0.1 is taken ({exc.strerror}): another cluster running? "
                                   f"`make down` stops the Compose one; or choose another base port") from None


def spawn(node_env: dict, quiet: bool = False) -> subprocess.Popen:
    """Start one node process with its environment (see :func:`node_envs`)."""
    out = subprocess.DEVNULL if quiet else None
    return subprocess.Popen([sys.executable, "-m", "node"], env=node_env, stdout=out, stderr=out)


def start(data_dir: str, base_port: int = 8000, followers: int = FOLLOWER_COUNT,
          env: dict | None = None, timeout: float = 30.0, quiet: bool = False) -> list[subprocess.Popen]:
    """Start the nodes (followers first) and return once all answer /health."""
    envs = node_envs(data_dir, base_port, followers, dict(os.environ if env is None else env))
    check_ports_free([int(node_env["PORT"]) for node_env in envs])
    order = envs[1:] + envs[:1]
    procs = []
    try:
        for node_env in order:
            procs.append(spawn(node_env, quiet))
        for node_env, proc in zip(order, procs):
            wait_healthy(int(node_env["PORT"]), proc, timeout)
    except BaseException:
        stop(procs)
        raise
    return procs


def stop(procs: list[subprocess.Popen], timeout: float = 10.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m node.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=".cluster-data", help="where the six logs live (default: %(default)s)")
    parser.add_argument("--base-port", type=int, default=8000, help="leader port; followers use the next five")
    args = parser.parse_args(argv)
    procs = start(os.path.abspath(args.data_dir), args.base_port)
    print(f"leader     http://127.0.0.1:{args.base_port}  (writes)", flush=True)
    for i in range(1, FOLLOWER_COUNT + 1):
        print(f"follower{i}  http://127.0.0.1:{args.base_port + i}", flush=True)
    print(f"data in {os.path.abspath(args.data_dir)}; Ctrl-C stops the cluster", flush=True)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    dead = [p for p in procs if p.poll() not in (None, 0)]
    stop(procs)
    if dead:
        sys.exit(f"a node exited with code {dead[0].returncode}; cluster stopped")
    print("cluster stopped", flush=True)


if __name__ == "__main__":
    main()
