"""The follower's rules (node.core.following) driven by the tables in testdata/follower_*.txt:
no log file, no loop, no sockets.

Commands (times in ms):
    init                        a follower with an empty state
    accept 3 1 2:v              entries by seq (value v, default "v<seq>"): which are new, or the conflict
    durable 3 1                 these stored entries are durable now
    lost 3                      their sync failed
    leader-holds last=N asked=M a pull sent when M was applied said the leader's last seq is N
    state                       applied seq, visible state, entries in flight and waiting for a gap
    catch-up interval=2000      a catch-up schedule
    pull at=T applied=N         the pull to make now, if any
    page last=N more=false at=T a page arrived
    pull-failed at=T            a pull failed
"""

from __future__ import annotations

import zlib

import pytest

from node.core.following import CatchUp, EntryConflict, FollowerCore
from node.log import Entry
from node.store import Store
from tests.core.datadriven import Case, files, run_file


def entry_of(word: str) -> tuple[Entry, int]:
    seq, _, value = word.partition(":")
    entry = Entry(int(seq), "set", "k" + seq, value or f"v{seq}", 0.0)
    return entry, zlib.crc32(f"{entry.seq}:{entry.value}".encode()) + 1


class FollowerTable:
    def __init__(self) -> None:
        self.core = FollowerCore(Store())
        self.catch_up: CatchUp | None = None
        self.held: dict[int, Entry] = {}

    def run(self, case: Case) -> str:
        return getattr(self, case.command.replace("-", "_"))(case)

    def init(self, case: Case) -> str:
        self.__init__()
        return "ok"

    def accept(self, case: Case) -> str:
        entries = [entry_of(word) for word in case.words]
        try:
            fresh = self.core.accept(entries)
        except EntryConflict as exc:
            return f"conflict: {str(exc).split(';')[0]}"
        for i in fresh:
            self.held[entries[i][0].seq] = entries[i][0]
        return f"store {[entries[i][0].seq for i in fresh]}"

    def durable(self, case: Case) -> str:
        self.core.durable([self.held[int(word)] for word in case.words])
        return self.state(case)

    def lost(self, case: Case) -> str:
        self.core.not_durable([self.held[int(word)] for word in case.words])
        return self.state(case)

    def leader_holds(self, case: Case) -> str:
        asked = int(case.arg("asked", str(self.core.applied_seq)))
        return self.core.leader_holds(int(case.arg("last")), asked) or self.state(case)

    def state(self, case: Case) -> str:
        core = self.core
        return (f"applied={core.applied_seq} data={core.store.snapshot()}\n"
                f"inflight={sorted(core.inflight)} pending={sorted(core.pending)} "
                f"received={core.received_max} lag={core.lag}")

    def catch_up_(self, case: Case) -> str:
        self.catch_up = CatchUp(float(case.arg("interval")) / 1000)
        return "ok"

    def pull(self, case: Case) -> str:
        pull = self.catch_up.next_pull(case.ms(), int(case.arg("applied")))
        if pull is None:
            deadline = self.catch_up.next_deadline()
            return "wait" + ("" if deadline is None else f" until {deadline * 1000:g}")
        return f"pull after={pull.after} upto={pull.upto}"

    def page(self, case: Case) -> str:
        recovered = self.catch_up.page(int(case.arg("last")), case.arg("more") == "true", case.ms())
        return "leader reachable again" if recovered else "ok"

    def pull_failed(self, case: Case) -> str:
        first = self.catch_up.failed("connection refused", case.ms())
        return "first failure" if first else "still failing"


def dispatch(table: FollowerTable):
    def run(case: Case) -> str:
        if case.command == "catch-up":
            return table.catch_up_(case)
        return table.run(case)
    return run


@pytest.mark.parametrize("path", files("follower_"), ids=lambda p: p.stem)
def test_follower_rules(path):
    run_file(path, dispatch(FollowerTable()))
