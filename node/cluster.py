"""Run the leader and five followers as local processes, supervised: the cluster without Docker.

    WRITE_QUORUM=3 MIN_DELAY=0 MAX_DELAY=200 python -m node.cluster --data-dir /tmp/kv

Settings come from the same environment variables as a single node; ports are BASE..BASE+5
on 127.0.0.1. The six logs live under ``--data-dir``; starting again on the same directory
brings the data back and the leader's numbering goes on. A node that exits is reported and
started again after ``--restart-delay`` seconds (``--no-restart``: only reported); a live node
that stops answering /health is reported once, and once when it answers again. Ctrl-C or
SIGTERM stops all six.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable

from node.supervisor import Decision, Observation, Policy, Supervisor, describe_exit

FOLLOWER_COUNT = 5
# Settings that belong to the cluster layout, not to the user's environment.
LAYOUT_VARS = ("ROLE", "NODE_ID", "PORT", "HOST", "DATA_DIR", "PEERS")
HOST = "127.0.0.1"
# A healthy node answers /health in well under a millisecond; a paused one never does.
PROBE_TIMEOUT_S = 0.5
CHECK_INTERVAL_S = 0.5

log = logging.getLogger("node.cluster")


def node_names(followers: int = FOLLOWER_COUNT) -> list[str]:
    return ["leader"] + [f"follower{i}" for i in range(1, followers + 1)]


def node_envs(data_dir: str, base_port: int, followers: int, env: dict) -> list[dict]:
    """Environment of each node, leader first: the user's settings plus this node's place in
    the cluster. ``PEERS`` names every member; ``ROLE`` makes ``leader`` the first leader."""
    base = {k: v for k, v in env.items() if k not in LAYOUT_VARS}
    # One secret shared by the six nodes of this run, unless the user chose one.
    base.setdefault("REPLICATION_SECRET", secrets.token_hex(16))
    names = node_names(followers)
    addresses = [f"{HOST}:{base_port + i}" for i in range(len(names))]
    base["PEERS"] = ",".join(f"{name}={address}" for name, address in zip(names, addresses))
    envs = [dict(base, ROLE="leader" if name == "leader" else "follower") for name in names]
    for i, (name, node_env) in enumerate(zip(names, envs)):
        node_env.update(NODE_ID=name, HOST=HOST, PORT=str(base_port + i), DATA_DIR=os.path.join(data_dir, name))
    return envs


def answers_health(port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):
        return False


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node on port {port} exited with code {proc.returncode}; see its log above")
        if answers_health(port, timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"node on port {port} not healthy after {timeout:.0f} s")


def check_ports_free(ports: list[int]) -> None:
    """Refuse to start on a port something already listens on: its /health would answer for a
    node that never came up (e.g. the Compose cluster publishes 8000..8005 on 127.0.0.1)."""
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError as exc:
                raise RuntimeError(f"port {port} on 127.0.0.1 is taken ({exc.strerror}): another cluster running? "
                                   f"`make down` stops the Compose one; or choose another base port") from None


def spawn(node_env: dict, quiet: bool = False) -> subprocess.Popen:
    """Start one node process with its environment (see :func:`node_envs`).

    In a session of its own, so Ctrl-C in the terminal reaches only the supervisor, which then
    stops each node once: a node that got the terminal's SIGINT and then the supervisor's
    SIGTERM as it exited would die of the second."""
    out = subprocess.DEVNULL if quiet else None
    return subprocess.Popen([sys.executable, "-m", "node"], env=node_env, stdout=out, stderr=out,
                            start_new_session=True)


def stop(procs: list[subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGTERM to every node, then SIGKILL to those still running after ``timeout``."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            # A paused node holds SIGTERM until it runs again.
            proc.send_signal(signal.SIGCONT)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LocalCluster:
    """The nodes as local processes with a handle on each, and their supervisor.

        cluster = LocalCluster(data_dir, base_port, env=env, quiet=True).start()
        cluster.kill("follower3")       # SIGKILL, returns once it exited
        cluster.restart("follower3")    # same environment, returns once it is healthy
        cluster.stop()

    The default policy only reports exits, so a test that kills and restarts a node itself
    never races with the supervisor; with ``Policy(restart=True)`` and
    :meth:`supervise_in_background` (what the command does) exits are restarted by it.
    ``clock``, ``spawn`` and ``probe`` are the seams for testing :meth:`supervise_once`.
    """

    def __init__(self, data_dir: str, base_port: int = 8000, followers: int = FOLLOWER_COUNT, env: dict | None = None,
                 *, quiet: bool = False, policy: Policy | None = None, report: Callable[[str], None] = log.warning,
                 clock: Callable[[], float] = time.monotonic, spawn: Callable = spawn,
                 probe: Callable[[int], bool] = answers_health) -> None:
        envs = node_envs(data_dir, base_port, followers, dict(os.environ if env is None else env))
        self.envs: dict[str, dict] = dict(zip(node_names(followers), envs))
        self.procs: dict[str, subprocess.Popen] = {}
        self.quiet = quiet
        self.supervisor = Supervisor(policy or Policy(restart=False))
        self.report, self.clock, self._spawn, self.probe = report, clock, spawn, probe
        # Guards procs; notified whenever a node's process is replaced.
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def port(self, name: str) -> int:
        return int(self.envs[name]["PORT"])

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.port(name)}"

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def start_order(self) -> list[str]:
        """Followers first: the leader opens its follower connections at start."""
        names = list(self.envs)
        return names[1:] + names[:1]

    def start(self, timeout: float = 30.0) -> LocalCluster:
        """Start every node and return once all answer /health; on failure stop those started."""
        check_ports_free([self.port(name) for name in self.envs])
        try:
            for name in self.start_order():
                self.procs[name] = self._spawn(self.envs[name], self.quiet)
            for name in self.start_order():
                wait_healthy(self.port(name), self.procs[name], timeout)
        except BaseException:
            stop(list(self.procs.values()))
            raise
        return self

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` and wait for the process to exit; returns its exit code."""
        proc = self.procs[name]
        proc.send_signal(sig)
        return proc.wait()

    def pause(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGCONT)

    def restart(self, name: str, timeout: float = 30.0) -> None:
        """Stop the node if it still runs, start it again with the same environment, wait healthy."""
        with self._changed:
            stop([self.procs[name]])
            proc = self._replace(name)
        wait_healthy(self.port(name), proc, timeout)

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 30.0) -> None:
        """Until a new process replaced ``old_pid`` (the supervisor's restart) and answers /health."""
        deadline = time.monotonic() + timeout
        with self._changed:
            if not self._changed.wait_for(lambda: self.procs[name].pid != old_pid, timeout):
                raise RuntimeError(f"{name} (pid {old_pid}) not restarted within {timeout:g} s")
            proc = self.procs[name]
        wait_healthy(self.port(name), proc, max(deadline - time.monotonic(), 1.0))

    def _replace(self, name: str) -> subprocess.Popen:
        """A new process for ``name``; the caller holds ``_changed``."""
        proc = self.procs[name] = self._spawn(self.envs[name], self.quiet)
        self._changed.notify_all()
        return proc

    def observe(self) -> list[Observation]:
        """Each node as it is now: exited or not, and (if running) whether it answers /health."""
        with self._changed:
            procs = dict(self.procs)
        seen = []
        for name, proc in procs.items():
            returncode = proc.poll()
            answered = returncode is None and self.probe(self.port(name))
            seen.append(Observation(name, proc.pid, returncode, answered))
        return seen

    def supervise_once(self) -> Decision:
        """One cycle: observe every node, let the supervisor decide, report and restart."""
        seen = self.observe()
        decision = self.supervisor.step(self.clock(), seen)
        if self._stopping.is_set():  # exits seen while stopping are the stop itself
            return decision
        for line in decision.reports:
            self.report(line)
        pids = {observation.name: observation.pid for observation in seen}
        with self._changed:
            for name in decision.restarts:
                if self.procs[name].pid == pids[name]:  # not restarted by hand meanwhile
                    self._restart_for_supervisor(name)
        return decision

    def _restart_for_supervisor(self, name: str) -> None:
        try:
            self._replace(name)
        except OSError as exc:
            self.report(self.supervisor.restart_failed(self.clock(), name, str(exc)))

    def supervise_in_background(self, interval: float = CHECK_INTERVAL_S) -> LocalCluster:
        self._thread = threading.Thread(target=self._supervise, args=(interval,), name="supervisor", daemon=True)
        self._thread.start()
        return self

    def _supervise(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            try:
                self.supervise_once()
            except Exception as exc:  # a supervisor that dies silently would leave nodes unwatched
                log.exception("supervisor cycle failed")
                self.report(f"supervisor cycle failed ({exc!r}); next cycle in {interval:g} s")

    def request_stop(self) -> None:
        """Stop supervising: the cycle under way reports and restarts nothing more. Safe in a
        signal handler, since the main thread never holds this event's lock."""
        self._stopping.set()

    def join_supervisor(self) -> None:
        """Until the supervisor's thread has ended (after :meth:`request_stop`)."""
        if self._thread is not None:
            self._thread.join()

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """Stop supervising, then every node (SIGTERM, SIGKILL after ``timeout``); their exit codes."""
        self.request_stop()
        self.join_supervisor()
        with self._changed:
            stop(list(self.procs.values()), timeout)
            return {name: proc.returncode for name, proc in self.procs.items()}


def start(data_dir: str, base_port: int = 8000, followers: int = FOLLOWER_COUNT,
          env: dict | None = None, timeout: float = 30.0, quiet: bool = False) -> list[subprocess.Popen]:
    """Start the nodes (followers first), unsupervised, and return their processes once all answer /health."""
    cluster = LocalCluster(data_dir, base_port, followers, env, quiet=quiet).start(timeout)
    return [cluster.procs[name] for name in cluster.start_order()]


def stop_message(codes: dict[str, int]) -> str | None:
    """Why the stop was not clean: nodes whose last process ended otherwise than with code 0
    (down at the time, or not stopping within the bound)."""
    problems = [f"{name} {describe_exit(code)}" for name, code in codes.items() if code != 0]
    return "; ".join(problems) or None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m node.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=".cluster-data", help="where the six logs live (default: %(default)s)")
    parser.add_argument("--base-port", type=int, default=8000, help="leader port; followers use the next five")
    parser.add_argument("--restart-delay", type=float, default=1.0, metavar="SECONDS",
                        help="wait this long before starting a node that exited again (default: %(default)g)")
    parser.add_argument("--no-restart", action="store_true", help="only report a node that exits; do not restart it")
    parser.add_argument("--no-etcd", action="store_true",
                        help="do not start etcd even when it is installed (failover is then manual)")
    args = parser.parse_args(argv)
    if args.restart_delay < 0:
        parser.error(f"--restart-delay {args.restart_delay:g} is negative; give 0 or more seconds")
    return args


def start_coordinator(disabled: bool):
    """A one-member etcd for automatic failover when etcd is installed (and not disabled);
    None, with one line saying failover is manual, otherwise."""
    from node.etcd_local import etcd_binary, start_etcd

    if disabled or etcd_binary() is None:
        say("failover is manual: " + ("--no-etcd given" if disabled else "no etcd on PATH (apt-get install etcd-server)")
            + "; promote with python -m node.admin --base-port PORT promote NODE")
        return None
    etcd = start_etcd(1)
    say(f"etcd at {','.join(etcd.endpoints)}: automatic failover (LEADER_TTL {os.environ.get('LEADER_TTL', '3000')} ms)")
    return etcd


def say(line: str) -> None:
    print(f"cluster: {line}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data_dir = os.path.abspath(args.data_dir)
    policy = Policy(restart=not args.no_restart, restart_delay=args.restart_delay)
    etcd = start_coordinator(args.no_etcd)
    env = dict(os.environ, ETCD_ENDPOINTS=",".join(etcd.endpoints)) if etcd is not None else None
    cluster = LocalCluster(data_dir, args.base_port, env=env, policy=policy, report=say)
    try:
        cluster.start()
    except RuntimeError as exc:
        if etcd is not None:
            etcd.stop()
        sys.exit(f"cluster not started: {exc}")
    for name in cluster.envs:
        print(f"{name:<10} {cluster.url(name)}  pid {cluster.pid(name)}{'  (writes)' if name == 'leader' else ''}",
              flush=True)
    print(f"data in {data_dir}; Ctrl-C stops the cluster", flush=True)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: cluster.request_stop())
    cluster.supervise_in_background().join_supervisor()
    codes = cluster.stop()
    if etcd is not None:
        etcd.stop()
    problem = stop_message(codes)
    if problem:
        sys.exit(f"cluster stopped; {problem}")
    print("cluster stopped", flush=True)


if __name__ == "__main__":
    main()
