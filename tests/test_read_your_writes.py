"""``?min_seq=S`` on reads, leader and five followers on one loop: a follower answers only once it
has applied S (read-your-writes, DDIA 5.2), or says with a 504 how far it got."""

import asyncio
import time

import pytest


@pytest.mark.gen_test(timeout=60)
async def test_a_follower_read_with_min_seq_never_shows_an_older_value(make_cluster):
    # Quorum 1 and 100..400 ms of lag: when the leader acknowledges, most followers lack the write
    # (catch-up pulls, which may deliver an entry before its delay, only after the test).
    async with make_cluster(WRITE_QUORUM="1", MIN_DELAY="100", MAX_DELAY="400", CATCHUP_INTERVAL="30000") as cluster:
        lagging = 0
        for i in range(8):
            seq = (await cluster.write("counter", i))["seq"]
            lagging += sum(cluster.nodes[f].store.applied_seq < seq for f in cluster.follower_names)
            answers = await asyncio.gather(*(cluster.request(f, "GET", f"/read/counter?min_seq={seq}")
                                             for f in cluster.follower_names))
            for name, (status, answer) in zip(cluster.follower_names, answers):
                assert status == 200, (name, answer)
                assert answer["value"] == i and answer["seq"] == seq and answer["applied_seq"] >= seq, (name, answer)
        assert lagging >= 8 * 3  # without min_seq those reads would have shown older values


@pytest.mark.gen_test(timeout=60)
async def test_keys_and_all_wait_for_min_seq_too(make_cluster):
    async with make_cluster(WRITE_QUORUM="1", MIN_DELAY="100", MAX_DELAY="300") as cluster:
        seq = (await cluster.write("new-key", "v"))["seq"]
        for name in cluster.follower_names:
            status, keys = await cluster.request(name, "GET", f"/keys?min_seq={seq}")
            assert status == 200 and "new-key" in keys["keys"] and keys["applied_seq"] >= seq
            status, everything = await cluster.request(name, "GET", f"/all?min_seq={seq}")
            assert status == 200 and everything["data"]["new-key"] == "v"


@pytest.mark.gen_test(timeout=60)
async def test_a_seq_no_follower_reaches_in_time_is_a_504_saying_how_far(make_cluster):
    async with make_cluster(READ_WAIT="150", MAX_DELAY="10") as cluster:
        await cluster.write("a", 1)
        await cluster.write("b", 2)
        await cluster.settled()
        beyond = 1000  # far past the leader's last seq (2)
        for name in ["follower2", "leader"]:
            started = time.monotonic()
            status, answer = await cluster.request(name, "GET", f"/read/a?min_seq={beyond}")
            elapsed = time.monotonic() - started
            assert status == 504, answer
            assert (answer["applied_seq"], answer["min_seq"]) == (2, beyond)
            assert 140 <= answer["waited_ms"] and 0.14 <= elapsed < 2.0
            assert f"applied 2 of {beyond} within READ_WAIT=150 ms" in answer["error"]
            assert len(cluster.nodes[name].store.waiters) == 0
        # Nothing changed, and the node still serves plain reads.
        assert (await cluster.request("follower2", "GET", "/read/a"))[1]["value"] == 1


@pytest.mark.gen_test(timeout=60)
async def test_a_waiting_read_is_answered_when_a_later_write_arrives(make_cluster):
    """The reader is woken by the apply itself: it answers as soon as the entry lands, not at
    the end of READ_WAIT."""
    async with make_cluster(READ_WAIT="5000", MIN_DELAY="0", MAX_DELAY="10") as cluster:
        read = asyncio.ensure_future(cluster.request("follower4", "GET", "/read/later?min_seq=1"))
        await asyncio.sleep(0.2)
        assert not read.done()
        started = time.monotonic()
        await cluster.write("later", "here")
        status, answer = await read
        assert status == 200 and answer["value"] == "here"
        assert time.monotonic() - started < 1.0
