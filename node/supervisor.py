"""The rules of the local cluster's supervisor: when a node is restarted and what is reported.

No processes, no HTTP, no clock: each cycle the caller observes every node (its pid, whether the
process has exited, whether it answered /health) and hands that to :meth:`Supervisor.step` with
the time; the answer says which lines to report and which nodes to start again. The caller
(``node.cluster``) carries that out, so the decisions are tested with plain records and a
made-up clock.

    supervisor = Supervisor(Policy(restart=True, restart_delay=1.0))
    decision = supervisor.step(now, [Observation("follower3", pid=4242, returncode=-9)])
    # decision.reports == ["follower3 (pid 4242) was killed by SIGKILL; restarting in 1 s"]
    # decision.restarts == [], and ["follower3"] once a step comes at now + 1.0 or later
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Policy:
    restart: bool = True
    # Seconds between an exit and the restart: the port is free again at once, and a second is
    # short enough that a test or an operator barely waits.
    restart_delay: float = 1.0
    # A node that exits again before it ever answered /health (bad setting, damaged log) waits
    # twice as long each time, up to this bound, instead of filling the terminal.
    max_restart_delay: float = 30.0
    # Silence on /health from a live process that had answered: three missed cycles of a healthy
    # node's sub-millisecond answer mean it is paused or swamped, not slow.
    unresponsive_after: float = 3.0
    # A fresh process replays its log before it listens; a large log takes seconds.
    start_timeout: float = 30.0


@dataclass(frozen=True)
class Observation:
    """One node as the caller saw it in this cycle."""

    name: str
    pid: int
    returncode: int | None = None  # None while the process runs; negative: killed by that signal
    answered: bool = False  # /health answered 200 in this cycle (never probed once exited)


@dataclass
class Decision:
    reports: list[str] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)


@dataclass
class Watch:
    """What the supervisor knows of one node since its process last started."""

    pid: int
    started_at: float
    last_answer: float | None = None  # None: has not answered /health since this start
    silence_reported: bool = False
    exited: bool = False
    restart_at: float | None = None  # set while a restart is due
    # Exits or failed starts in a row without a /health answer in between; sets the backoff.
    failures: int = 0
    restarted: bool = False  # this process replaced an earlier one of the same node


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class Supervisor:
    """Per node: report an exit and schedule its restart, report silence and its end."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.watches: dict[str, Watch] = {}

    def step(self, now: float, observations: list[Observation]) -> Decision:
        decision = Decision()
        for seen in observations:
            watch = self._watch(now, seen, decision)
            if seen.returncode is not None:
                self._exited(now, seen, watch, decision)
            elif seen.answered:
                self._answered(now, seen, watch, decision)
            else:
                self._silent(now, seen, watch, decision)
        return decision

    def _watch(self, now: float, seen: Observation, decision: Decision) -> Watch:
        """The node's watch; a new pid means a new process (restarted by us or by hand)."""
        old = self.watches.get(seen.name)
        if old is not None and old.pid == seen.pid:
            return old
        watch = Watch(seen.pid, started_at=now, restarted=old is not None)
        if old is not None:
            watch.failures = old.failures
            decision.reports.append(f"{seen.name} is running again (pid {seen.pid})")
        self.watches[seen.name] = watch
        return watch

    def _exited(self, now: float, seen: Observation, watch: Watch, decision: Decision) -> None:
        if not watch.exited:
            watch.exited = True
            watch.failures += 1
            decision.reports.append(f"{seen.name} (pid {seen.pid}) {describe_exit(seen.returncode)}; "
                                    f"{self._next_after_exit(now, watch)}")
        elif watch.restart_at is not None and now >= watch.restart_at:
            watch.restart_at = None
            decision.restarts.append(seen.name)

    def _next_after_exit(self, now: float, watch: Watch) -> str:
        if not self.policy.restart:
            return "not restarting (restart is off)"
        delay = self.restart_delay(watch.failures)
        watch.restart_at = now + delay
        if watch.failures == 1:
            return f"restarting in {delay:g} s"
        return f"restarting in {delay:g} s (failure {watch.failures} in a row without a /health answer)"

    def restart_failed(self, now: float, name: str, error: str) -> str:
        """The caller could not start the process (e.g. no fork): try again after the backoff."""
        watch = self.watches[name]
        watch.failures += 1
        return f"{name} could not be started ({error}); {self._next_after_exit(now, watch)}"

    def restart_delay(self, failures: int) -> float:
        return min(self.policy.restart_delay * 2 ** (failures - 1), self.policy.max_restart_delay)

    def _answered(self, now: float, seen: Observation, watch: Watch, decision: Decision) -> None:
        if watch.silence_reported:
            silent_s = now - (watch.last_answer if watch.last_answer is not None else watch.started_at)
            decision.reports.append(f"{seen.name} (pid {seen.pid}) answers /health again after {int(silent_s)} s")
        elif watch.last_answer is None and watch.restarted:
            decision.reports.append(f"{seen.name} (pid {seen.pid}) is healthy")
        watch.last_answer = now
        watch.silence_reported = False
        watch.failures = 0

    def _silent(self, now: float, seen: Observation, watch: Watch, decision: Decision) -> None:
        if watch.silence_reported:
            return
        if watch.last_answer is not None:
            silent_s = now - watch.last_answer
            if silent_s >= self.policy.unresponsive_after:
                watch.silence_reported = True
                decision.reports.append(f"{seen.name} (pid {seen.pid}) is not answering /health for "
                                        f"{int(silent_s)} s: paused or overloaded?")
        elif now - watch.started_at >= self.policy.start_timeout:
            watch.silence_reported = True
            decision.reports.append(f"{seen.name} (pid {seen.pid}) has not answered /health "
                                    f"{int(now - watch.started_at)} s after its start: still replaying its log, or stuck?")
