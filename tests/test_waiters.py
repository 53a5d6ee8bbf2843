"""The readers waiting for a seq (``?min_seq=``): woken by ``Store.apply``, timed out, never leaked."""

import asyncio
import random
import time

import pytest

from node.log import Entry
from node.store import Store
from node.waiters import AppliedWaiters


def apply_through(store: Store, seq: int) -> None:
    for n in range(store.applied_seq + 1, seq + 1):
        store.apply(Entry(n, "set", f"k{n}", n, 0.0))


async def one_loop_turn() -> None:
    """Let the readers whose Futures were just resolved run."""
    for _ in range(3):
        await asyncio.sleep(0)


@pytest.mark.gen_test
async def test_a_reader_is_woken_by_the_apply_that_reaches_its_seq():
    store = Store()
    reader = asyncio.ensure_future(store.wait_applied(3, timeout=5))
    await one_loop_turn()
    apply_through(store, 2)
    await one_loop_turn()
    assert not reader.done()  # seq 2 is not enough
    apply_through(store, 3)
    await one_loop_turn()
    assert reader.done() and reader.result() is True
    assert len(store.waiters) == 0 and store.waiters._heap == []


@pytest.mark.gen_test
async def test_a_seq_already_applied_needs_no_waiter():
    store = Store()
    apply_through(store, 4)
    assert await store.wait_applied(4, timeout=0) is True
    assert await store.wait_applied(0, timeout=0) is True
    assert store.waiters._heap == []


@pytest.mark.gen_test
async def test_a_reader_times_out_and_leaves_nothing_behind():
    store = Store()
    started = time.monotonic()
    assert await store.wait_applied(10, timeout=0.05) is False
    assert 0.045 <= time.monotonic() - started < 1.0
    assert len(store.waiters) == 0 and store.waiters._heap == []
    assert await store.wait_applied(10, timeout=0) is False  # READ_WAIT=0: answer at once
    apply_through(store, 10)  # waking after a timeout is harmless
    assert store.waiters._heap == []


@pytest.mark.gen_test
async def test_many_readers_are_woken_exactly_when_their_seq_is_applied():
    store = Store()
    rng = random.Random(7)
    wanted = [rng.randint(1, 100) for _ in range(2000)]
    readers = [asyncio.ensure_future(store.wait_applied(seq, timeout=10)) for seq in wanted]
    await one_loop_turn()
    assert len(store.waiters) == 2000
    apply_through(store, 50)
    await one_loop_turn()
    assert [r.done() for r in readers] == [seq <= 50 for seq in wanted]
    assert len(store.waiters) == sum(seq > 50 for seq in wanted)
    apply_through(store, 100)
    assert all(await asyncio.gather(*readers))
    assert store.waiters._heap == []


@pytest.mark.gen_test
async def test_timed_out_readers_for_a_seq_that_never_comes_do_not_pile_up():
    store = Store()
    for _ in range(3):
        results = await asyncio.gather(*(store.wait_applied(10**9, timeout=0.01) for _ in range(500)))
        assert not any(results)
    assert store.waiters._heap == [] and len(store.waiters) == 0
    # Live readers survive the compaction that drops the abandoned ones.
    live = asyncio.ensure_future(store.wait_applied(2, timeout=10))
    await asyncio.gather(*(store.wait_applied(10**9, timeout=0.01) for _ in range(50)))
    assert len(store.waiters) == 1 and len(store.waiters._heap) <= 2
    apply_through(store, 2)
    assert await live is True


@pytest.mark.gen_test
async def test_a_cancelled_reader_is_dropped():
    """A client that closes its connection cancels its read: its waiter must not stay."""
    store = Store()
    reader = asyncio.ensure_future(store.wait_applied(5, timeout=10))
    await one_loop_turn()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert len(store.waiters) == 0 and store.waiters._heap == []


@pytest.mark.gen_test
async def test_notify_wakes_readers_after_a_rebuild():
    """State set another way than ``apply`` (a rebuild from the log, a snapshot): ``notify``."""
    store = Store()
    reader = asyncio.ensure_future(store.wait_applied(7, timeout=5))
    await one_loop_turn()
    store.applied_seq = 9  # what a rebuild leaves behind
    await one_loop_turn()
    assert not reader.done()
    store.notify()
    assert await reader is True


@pytest.mark.gen_test
async def test_ties_on_one_seq_all_wake():
    waiters = AppliedWaiters()
    readers = [asyncio.ensure_future(waiters.wait(3, applied_seq=0, timeout=5)) for _ in range(10)]
    await one_loop_turn()
    waiters.wake(3)
    assert await asyncio.gather(*readers) == [True] * 10
