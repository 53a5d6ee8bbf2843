"""The quorum wait and follower progress, table-driven and free of I/O."""

import asyncio

import pytest

from node.quorum import FollowerProgress, QuorumTimeout, QuorumTracker


@pytest.mark.parametrize("quorum", [1, 2, 3, 4, 5])
@pytest.mark.gen_test
async def test_resolves_at_exactly_w_distinct_confirmations(quorum):
    tracker = QuorumTracker(quorum)
    future = tracker.expect(1)
    for i in range(quorum - 1):
        tracker.confirm(1, f"f{i}")
        tracker.confirm(1, f"f{i}")  # a duplicate confirmation does not count twice
        assert not future.done()
    tracker.confirm(1, f"f{quorum - 1}")
    assert future.done() and future.result() == quorum
    assert await tracker.wait(1, future, 1000) == quorum


@pytest.mark.gen_test
async def test_times_out_reporting_confirmations_of_required():
    tracker = QuorumTracker(3)
    future = tracker.expect(9)
    tracker.confirm(9, "f1")
    with pytest.raises(QuorumTimeout) as err:
        await tracker.wait(9, future, 20)
    assert (err.value.seq, err.value.confirmations, err.value.quorum) == (9, 1, 3)
    assert "1 of 3 required" in str(err.value) and "keeps replicating" in str(err.value)


@pytest.mark.gen_test
async def test_confirmations_of_one_entry_do_not_count_for_another():
    tracker = QuorumTracker(1)
    first, second = tracker.expect(1), tracker.expect(2)
    tracker.confirm(2, "f1")
    assert second.done() and not first.done()


@pytest.mark.gen_test
async def test_late_confirmation_after_answer_is_ignored():
    tracker = QuorumTracker(1)
    future = tracker.expect(1)
    tracker.confirm(1, "f1")
    await tracker.wait(1, future, 100)
    tracker.confirm(1, "f2")  # background send finishing after the client got its answer
    assert tracker.confirmations(1) == 0


@pytest.mark.parametrize(
    "confirmed, reported, match",
    [
        ([], None, 0),
        ([1, 2, 3], None, 3),
        ([2, 3], None, 0),
        ([3, 1, 2], None, 3),
        ([1, 3, 4], None, 1),
        ([5, 6], 4, 6),
        ([7], 5, 5),
        ([1, 2], 1, 2),
    ],
)
def test_follower_progress_tracks_the_contiguous_prefix(confirmed, reported, match):
    progress = FollowerProgress("f1:1")
    for seq in confirmed:
        progress.confirmed(seq)
    if reported is not None:
        progress.reported_applied(reported)
    assert progress.match == match


@pytest.mark.gen_test
async def test_wait_does_not_cancel_the_quorum_future_on_timeout():
    tracker = QuorumTracker(2)
    future = tracker.expect(1)
    with pytest.raises(QuorumTimeout):
        await tracker.wait(1, future, 10)
    await asyncio.sleep(0)
    assert not future.cancelled()
