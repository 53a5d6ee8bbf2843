"""The local cluster's supervisor: its rules with made-up observations and a made-up clock, one
cycle of the cluster with fake processes, then the real six processes and the command."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from node import cluster as local_cluster
from node.supervisor import Observation, Policy, Supervisor, describe_exit
from tests import net
from tests.net import free_port_block
from tests.test_cluster import env, wait_converged

NAMES = local_cluster.node_names()
PIDS = {name: 10 + i for i, name in enumerate(NAMES)}


def running(*silent: str, pids: dict | None = None, **exited: int) -> list[Observation]:
    """All six nodes: answering /health, except those named ``silent`` or with an exit code."""
    pids = dict(PIDS, **(pids or {}))
    return [Observation(name, pids[name], exited.get(name), name not in silent and name not in exited)
            for name in NAMES]


def test_a_dead_node_is_restarted_after_the_delay_not_before():
    supervisor = Supervisor(Policy(restart=True, restart_delay=1.0))
    supervisor.step(0.0, running())
    first = supervisor.step(10.0, running(follower3=-signal.SIGKILL))
    assert first.reports == ["follower3 (pid 13) was killed by SIGKILL; restarting in 1 s"]
    assert first.restarts == []
    assert supervisor.step(10.9, running(follower3=-signal.SIGKILL)).restarts == []
    assert supervisor.step(11.0, running(follower3=-signal.SIGKILL)).restarts == ["follower3"]
    assert supervisor.step(11.5, running(follower3=-signal.SIGKILL)).restarts == []  # once
    back = supervisor.step(11.6, running("follower3", pids={"follower3": 99}))
    assert back.reports == ["follower3 is running again (pid 99)"] and back.restarts == []
    assert supervisor.step(12.0, running(pids={"follower3": 99})).reports == ["follower3 (pid 99) is healthy"]
    assert supervisor.step(13.0, running(pids={"follower3": 99})).reports == []


def test_with_restart_off_an_exit_is_only_reported():
    supervisor = Supervisor(Policy(restart=False))
    supervisor.step(0.0, running())
    decision = supervisor.step(1.0, running(follower2=1))
    assert decision.reports == ["follower2 (pid 12) exited with code 1; not restarting (restart is off)"]
    for now in (2.0, 60.0, 3600.0):
        assert supervisor.step(now, running(follower2=1)).restarts == []
        assert supervisor.step(now, running(follower2=1)).reports == []


def test_a_paused_node_is_reported_once_and_once_when_it_answers_again():
    supervisor = Supervisor(Policy(restart=True, unresponsive_after=3.0))
    supervisor.step(0.0, running())
    for now in (1.0, 2.0, 2.9):
        assert supervisor.step(now, running("follower3")).reports == []
    silent = supervisor.step(3.0, running("follower3"))
    assert silent.reports == ["follower3 (pid 13) is not answering /health for 3 s: paused or overloaded?"]
    for now in (4.0, 10.0):
        assert supervisor.step(now, running("follower3")).reports == []
    assert supervisor.step(11.0, running()).reports == ["follower3 (pid 13) answers /health again after 11 s"]
    assert supervisor.step(12.0, running()).reports == []
    assert supervisor.step(14.9, running("follower3")).reports == []  # a new silence counts from 12.0
    assert len(supervisor.step(15.0, running("follower3")).reports) == 1


def test_a_fresh_process_has_the_start_timeout_before_its_silence_is_reported():
    supervisor = Supervisor(Policy(start_timeout=30.0, unresponsive_after=3.0))
    assert supervisor.step(0.0, running("leader")).reports == []
    assert supervisor.step(29.0, running("leader")).reports == []
    assert supervisor.step(30.0, running("leader")).reports == [
        "leader (pid 10) has not answered /health 30 s after its start: still replaying its log, or stuck?"]


def test_a_node_that_exits_before_answering_waits_twice_as_long_each_time():
    supervisor = Supervisor(Policy(restart=True, restart_delay=1.0, max_restart_delay=5.0))
    supervisor.step(0.0, running())
    delays, now, pid = [], 0.0, PIDS["follower1"]
    for _ in range(5):
        report = supervisor.step(now, running(pids={"follower1": pid}, follower1=2)).reports[0]
        delays.append(float(re.search(r"restarting in (\S+) s", report)[1]))
        now += delays[-1]
        assert supervisor.step(now, running(pids={"follower1": pid}, follower1=2)).restarts == ["follower1"]
        pid += 1
        supervisor.step(now, running("follower1", pids={"follower1": pid}))
    assert delays == [1, 2, 4, 5, 5]
    assert "failure 5 in a row without a /health answer" in report
    supervisor.step(now + 1, running(pids={"follower1": pid}))  # answers: the count starts again
    assert "restarting in 1 s" in supervisor.step(now + 2, running(pids={"follower1": pid}, follower1=2)).reports[0]


def test_a_node_restarted_by_hand_meanwhile_is_not_restarted_again():
    supervisor = Supervisor(Policy(restart=True, restart_delay=1.0))
    supervisor.step(0.0, running())
    supervisor.step(1.0, running(follower4=-signal.SIGKILL))
    assert supervisor.step(1.5, running("follower4", pids={"follower4": 50})).reports == [
        "follower4 is running again (pid 50)"]
    assert supervisor.step(2.5, running(pids={"follower4": 50})).restarts == []


@pytest.mark.parametrize("returncode, text", [(-9, "was killed by SIGKILL"), (-15, "was killed by SIGTERM"),
                                              (1, "exited with code 1"), (0, "exited with code 0"),
                                              (-200, "was killed by signal 200")])
def test_describe_exit(returncode, text):
    assert describe_exit(returncode) == text


class FakeProcess:
    def __init__(self, pid: int, env: dict) -> None:
        self.pid, self.env, self.returncode = pid, env, None

    def poll(self):
        return self.returncode


class FakeNodes:
    """``spawn`` and ``probe`` for a LocalCluster whose nodes are FakeProcess records."""

    def __init__(self) -> None:
        self.spawned: list[FakeProcess] = []
        self.silent_ports: set[int] = set()

    def spawn(self, node_env: dict, quiet: bool = False) -> FakeProcess:
        self.spawned.append(FakeProcess(1000 + len(self.spawned), node_env))
        return self.spawned[-1]

    def probe(self, port: int) -> bool:
        return port not in self.silent_ports


def fake_cluster(policy: Policy):
    nodes, clock, lines = FakeNodes(), [0.0], []
    cluster = local_cluster.LocalCluster("/nowhere", 9000, env={"WRITE_QUORUM": "2"}, policy=policy,
                                         report=lines.append, clock=lambda: clock[0], spawn=nodes.spawn,
                                         probe=nodes.probe)
    cluster.procs = {name: nodes.spawn(cluster.envs[name]) for name in cluster.start_order()}
    return cluster, nodes, clock, lines


def test_one_cycle_respawns_a_dead_node_with_its_environment_after_the_delay():
    cluster, nodes, clock, lines = fake_cluster(Policy(restart=True, restart_delay=1.0))
    cluster.supervise_once()
    victim = cluster.procs["follower3"]
    victim.returncode = -signal.SIGKILL
    clock[0] = 0.5
    cluster.supervise_once()
    assert lines == [f"follower3 (pid {victim.pid}) was killed by SIGKILL; restarting in 1 s"]
    clock[0] = 1.4
    cluster.supervise_once()
    assert len(nodes.spawned) == 6 and cluster.procs["follower3"] is victim
    clock[0] = 1.5
    assert cluster.supervise_once().restarts == ["follower3"]
    assert len(nodes.spawned) == 7
    assert cluster.procs["follower3"] is nodes.spawned[-1] and cluster.pid("follower3") != victim.pid
    assert nodes.spawned[-1].env is cluster.envs["follower3"]
    assert all(cluster.procs[name] is nodes.spawned[i] for i, name in enumerate(cluster.start_order()) if name != "follower3")


def test_a_restart_that_cannot_spawn_is_tried_again_after_the_backoff():
    cluster, nodes, clock, lines = fake_cluster(Policy(restart=True, restart_delay=1.0))
    cluster.supervise_once()
    cluster.procs["follower5"].returncode = 1
    cluster.supervise_once()
    def no_fork(node_env, quiet):
        raise OSError("no fork")

    working_spawn, cluster._spawn = cluster._spawn, no_fork
    clock[0] = 1.0
    cluster.supervise_once()
    assert lines[-1] == ("follower5 could not be started (no fork); "
                         "restarting in 2 s (failure 2 in a row without a /health answer)")
    cluster._spawn = working_spawn
    clock[0] = 2.9
    assert cluster.supervise_once().restarts == []
    clock[0] = 3.0
    assert cluster.supervise_once().restarts == ["follower5"] and cluster.procs["follower5"] is nodes.spawned[-1]


def test_one_cycle_reports_a_paused_node_and_restarts_nothing():
    cluster, nodes, clock, lines = fake_cluster(Policy(restart=True))
    cluster.supervise_once()
    nodes.silent_ports.add(cluster.port("follower3"))
    for clock[0] in (1.0, 3.0, 5.0):
        cluster.supervise_once()
    nodes.silent_ports.clear()
    clock[0] = 6.0
    cluster.supervise_once()
    pid = cluster.pid("follower3")
    assert lines == [f"follower3 (pid {pid}) is not answering /health for 3 s: paused or overloaded?",
                     f"follower3 (pid {pid}) answers /health again after 6 s"]
    assert len(nodes.spawned) == 6


def test_nothing_is_reported_or_restarted_once_a_stop_is_requested():
    cluster, nodes, clock, lines = fake_cluster(Policy(restart=True, restart_delay=0.0))
    cluster.supervise_once()
    cluster.request_stop()
    for proc in cluster.procs.values():
        proc.returncode = 0  # the nodes' own SIGINT from the terminal
    for clock[0] in (1.0, 2.0):
        cluster.supervise_once()
    assert lines == [] and len(nodes.spawned) == 6


def test_every_node_gets_the_members_in_order_and_its_place():
    envs = local_cluster.node_envs("/d", 7000, 5, {"PEERS": "stale", "ROLE": "stale", "WRITE_QUORUM": "3"})
    peers = "leader=127.0.0.1:7000," + ",".join(f"follower{i}=127.0.0.1:{7000 + i}" for i in range(1, 6))
    assert all(e["PEERS"] == peers and e["WRITE_QUORUM"] == "3" for e in envs)
    assert len({e["REPLICATION_SECRET"] for e in envs}) == 1
    leader, follower2 = envs[0], envs[2]
    assert leader["ROLE"] == "leader" and leader["NODE_ID"] == "leader" and leader["PORT"] == "7000"
    assert follower2["ROLE"] == "follower" and follower2["NODE_ID"] == "follower2" and follower2["PORT"] == "7002"
    assert follower2["DATA_DIR"] == os.path.join("/d", "follower2")


def test_command_line_flags():
    assert local_cluster.parse_args([]).restart_delay == 1.0 and not local_cluster.parse_args([]).no_restart
    args = local_cluster.parse_args(["--restart-delay", "0.2", "--no-restart"])
    assert args.restart_delay == 0.2 and args.no_restart
    with pytest.raises(SystemExit):
        local_cluster.parse_args(["--restart-delay", "-1"])


def test_a_stop_is_clean_only_if_every_node_ended_with_code_0():
    assert local_cluster.stop_message({name: 0 for name in NAMES}) is None
    assert local_cluster.stop_message({"leader": 0, "follower3": -9, "follower5": 1}) == (
        "follower3 was killed by SIGKILL; follower5 exited with code 1")


@pytest.mark.cluster
def test_the_supervisor_brings_a_killed_follower_back_and_it_catches_up(tmp_path):
    base, lines = free_port_block(), []
    cluster = local_cluster.LocalCluster(str(tmp_path), base, env=env(WRITE_QUORUM="2"), quiet=True,
                                         policy=Policy(restart=True, restart_delay=0.2), report=lines.append)
    cluster.start().supervise_in_background(interval=0.1)
    try:
        old_pid = cluster.pid("follower3")
        cluster.kill("follower3")
        for i in range(20):  # written while follower3 is down or still catching up
            assert net.http("POST", cluster.url("leader") + "/write", {"key": f"k{i}", "value": i})[0] == 200
        cluster.wait_restarted("follower3", old_pid, timeout=20)
        assert wait_converged(base, timeout=20) == 20
        assert net.http("GET", cluster.url("follower3") + "/read/k19")[1]["value"] == 19
    finally:
        codes = cluster.stop()
    assert f"follower3 (pid {old_pid}) was killed by SIGKILL; restarting in 0.2 s" in lines
    assert codes == {name: 0 for name in NAMES}


class Lines:
    """A process's stdout, line by line, with a bound on each wait."""

    def __init__(self, stream) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.queue.put(line) for line in stream], daemon=True).start()

    def until(self, pattern: str, timeout: float = 20.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            line = self.queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            if found := re.search(pattern, line):
                return found


@pytest.mark.cluster
def test_cluster_command_restarts_a_killed_node_and_reports_a_paused_one(tmp_path):
    base = free_port_block()
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cluster", "--data-dir", str(tmp_path), "--base-port", str(base),
         "--restart-delay", "0.2"], env=env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out, pids = Lines(proc.stdout), {}
    try:
        # One line says how failover works here: automatic with the etcd it started, or manual.
        out.until(r"^cluster: (etcd at http://127\.0\.0\.1:\d+: automatic failover|failover is manual: no etcd on PATH)")
        pids = {name: int(out.until(rf"^{name} .* pid (\d+)")[1]) for name in NAMES}
        out.until("Ctrl-C stops the cluster")
        os.kill(pids["follower2"], signal.SIGKILL)
        out.until(rf"^cluster: follower2 \(pid {pids['follower2']}\) was killed by SIGKILL; restarting in 0.2 s$")
        new_pid = pids["follower2 again"] = int(out.until(r"^cluster: follower2 is running again \(pid (\d+)\)")[1])
        out.until(rf"^cluster: follower2 \(pid {new_pid}\) is healthy$")
        os.kill(pids["follower3"], signal.SIGSTOP)
        out.until(rf"^cluster: follower3 \(pid {pids['follower3']}\) is not answering /health for \d+ s: paused or overloaded\?$")
        os.kill(pids["follower3"], signal.SIGCONT)
        out.until(rf"^cluster: follower3 \(pid {pids['follower3']}\) answers /health again after \d+ s$")
        proc.send_signal(signal.SIGTERM)
        out.until("^cluster stopped$")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:  # the test failed: the command still stops its nodes on SIGTERM ...
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(25)
        if proc.poll() is None:  # ... or they are killed with it
            proc.kill()
            for pid in pids.values():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
