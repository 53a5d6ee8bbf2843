"""The follower channel's batching: when an idle channel sends at once and when it waits for company.

A fake connection stands in for the follower, so each test decides when a request is answered
and sees exactly which entries each request carried.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from node.quorum import FollowerProgress
from node.replication import Replicator

LONG_LINGER_US = 5_000_000  # far longer than any test waits: a send seen sooner was not the timer


class FakeFollower:
    """Records each request's entries; answers only when the test says so."""

    def __init__(self) -> None:
        self.requests: list[list[int]] = []
        self.sent_at: list[float] = []
        self.callback = None
        self.arrived = asyncio.Event()

    def request_head(self, method: str, path: str, headers: dict | None = None) -> bytes:
        return b"POST /replicate HTTP/1.1\r\n"

    def send_prepared(self, head: bytes, body: bytes, timeout: float, callback) -> None:
        assert self.callback is None, "a second request went out before the first was answered"
        self.requests.append([entry["seq"] for entry in json.loads(body)["entries"]])
        self.sent_at.append(time.monotonic())
        self.callback = callback
        self.arrived.set()

    def answer(self) -> None:
        callback, self.callback = self.callback, None
        callback(200, json.dumps({"applied_seq": self.requests[-1][-1], "node_id": "f1"}).encode(), None)

    async def next_request(self, timeout: float = 2.0) -> list[int]:
        await asyncio.wait_for(self.arrived.wait(), timeout)
        self.arrived.clear()
        return self.requests[-1]

    def close(self) -> None:
        pass


def make_replicator(linger_us: int) -> tuple[Replicator, FakeFollower]:
    progress = {"f1:8000": FollowerProgress("f1:8000")}
    replicator = Replicator(progress, 0, 0, "secret-123", lambda seq, address: None, linger_us=linger_us)
    follower = FakeFollower()
    replicator.channels[0].connection = follower
    return replicator, follower


def write(replicator: Replicator, *seqs: int) -> None:
    for seq in seqs:
        replicator.replicate(seq, json.dumps({"seq": seq}).encode())


async def first_request_of_three(replicator: Replicator, follower: FakeFollower) -> None:
    """Three entries in one loop iteration share a request: the channel now expects three."""
    write(replicator, 1, 2, 3)
    assert await follower.next_request() == [1, 2, 3]
    follower.answer()


async def later_iterations(count: int = 5) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


@pytest.mark.gen_test
async def test_a_lone_writer_never_waits_whatever_the_linger():
    replicator, follower = make_replicator(LONG_LINGER_US)
    for seq in (1, 2, 3):
        started = time.monotonic()
        write(replicator, seq)
        assert await follower.next_request() == [seq]
        assert time.monotonic() - started < 1.0
        follower.answer()
    await replicator.close()


@pytest.mark.gen_test
async def test_an_idle_channel_waits_for_as_many_entries_as_its_previous_request_carried():
    replicator, follower = make_replicator(LONG_LINGER_US)
    await first_request_of_three(replicator, follower)
    write(replicator, 4)
    await later_iterations()
    write(replicator, 5)
    await later_iterations()
    assert follower.requests == [[1, 2, 3]]  # two of three expected: still waiting
    write(replicator, 6)
    assert await follower.next_request() == [4, 5, 6]  # the third arrived: sent long before the linger ends
    await replicator.close()


@pytest.mark.gen_test
async def test_the_wait_ends_after_the_linger_with_what_is_due_and_the_expectation_follows():
    replicator, follower = make_replicator(linger_us=50_000)
    await first_request_of_three(replicator, follower)
    write(replicator, 4)
    fell_due = time.monotonic()
    assert await follower.next_request() == [4]
    assert follower.sent_at[-1] - fell_due >= 0.050  # waited the linger, not less
    follower.answer()
    write(replicator, 5)  # the previous request carried one entry: no more waiting
    assert await follower.next_request(timeout=0.040) == [5]
    await replicator.close()


@pytest.mark.gen_test
async def test_entries_that_waited_the_linger_behind_a_request_go_when_it_is_answered():
    replicator, follower = make_replicator(linger_us=20_000)
    write(replicator, 1, 2, 3)
    assert await follower.next_request() == [1, 2, 3]
    write(replicator, 4)  # falls due while the request is out
    deadline = follower.sent_at[-1] + 0.040
    while time.monotonic() < deadline:  # the request stays out past entry 4's linger
        await asyncio.sleep(0.005)
    follower.answer()
    assert await follower.next_request(timeout=0.010) == [4]
    await replicator.close()


@pytest.mark.gen_test
async def test_without_a_linger_an_idle_channel_sends_what_is_due_at_once():
    replicator, follower = make_replicator(linger_us=0)
    await first_request_of_three(replicator, follower)
    write(replicator, 4)
    assert await follower.next_request(timeout=0.5) == [4]
    await replicator.close()
