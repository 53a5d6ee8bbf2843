"""The quorum rule and follower progress as plain tables: no loop, no clock but the one passed in."""

import pytest

from node.core.progress import FollowerProgress
from node.core.quorum import WriteQuorum


@pytest.mark.parametrize("quorum", [1, 2, 3, 4, 5])
def test_acknowledged_at_exactly_w_distinct_confirmations(quorum):
    writes = WriteQuorum(quorum, timeout_ms=1000)
    writes.expect(1, now=0.0)
    for i in range(quorum - 1):
        assert writes.confirm(1, f"f{i}") is None
        assert writes.confirm(1, f"f{i}") is None  # the same follower again does not count twice
    assert writes.confirm(1, f"f{quorum - 1}") == quorum
    assert len(writes) == 0 and writes.confirm(1, "late") is None  # answered: late ones count for nothing


def test_confirmations_of_one_entry_do_not_count_for_another():
    writes = WriteQuorum(1, timeout_ms=1000)
    writes.expect(1, now=0.0)
    writes.expect(2, now=0.0)
    assert writes.confirm(2, "f1") == 1
    assert writes.confirmations(1) == 0 and len(writes) == 1


@pytest.mark.parametrize("now, expired", [(0.999, []), (1.0, [1]), (1.5, [1, 2]), (9.0, [1, 2])])
def test_writes_time_out_at_their_deadline_with_what_they_had(now, expired):
    writes = WriteQuorum(3, timeout_ms=1000)
    writes.expect(1, now=0.0)
    writes.expect(2, now=0.5)
    writes.expect(3, now=0.6)
    writes.confirm(1, "f1")
    writes.confirm(3, "f1"), writes.confirm(3, "f2"), writes.confirm(3, "f3")  # acknowledged: never times out
    timeouts = writes.expire(now)
    assert [t.seq for t in timeouts] == expired
    if expired:
        first = timeouts[0]
        assert (first.confirmations, first.quorum, first.timeout_ms) == (1, 3, 1000)
        assert "1 of 3 required" in str(first) and "keeps replicating" in str(first)
    assert writes.next_deadline() == (None if len(expired) == 2 else [1.0, 1.5][len(expired)])


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


def test_a_follower_is_down_for_as_long_as_it_failed_without_a_success():
    progress = FollowerProgress("f1:1")
    assert progress.down_for(5.0) == 0.0
    assert progress.failed("refused", now=1.0) is True  # the first of a run: worth a log line
    assert progress.failed("refused", now=2.0) is False
    assert progress.down_for(3.5) == 2.5
    assert progress.recovered() is True and progress.down_for(9.0) == 0.0 and progress.last_error is None


@pytest.mark.parametrize("status, refusal", [(200, False), (400, True), (403, True), (409, True), (413, True),
                                             (408, False), (429, False), (500, False), (503, False)])
def test_a_4xx_is_the_followers_verdict_except_timeout_and_too_many_requests(status, refusal):
    from node.core.leading import is_refusal

    assert is_refusal(status) is refusal
