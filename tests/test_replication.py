"""Leader and five followers on one event loop: quorum, convergence, catch-up, refusal."""

import asyncio

import pytest

from node.log import iter_entries


def seqs_in_log(cluster, name):
    return {e.seq for e in iter_entries(cluster.nodes[name].log.path)}


@pytest.mark.parametrize("quorum", [1, 3, 5])
@pytest.mark.gen_test(timeout=60)
async def test_acknowledged_write_is_already_durable_on_w_followers(make_cluster, quorum):
    async with make_cluster(WRITE_QUORUM=str(quorum), MIN_DELAY="0", MAX_DELAY="50") as cluster:
        answers = await asyncio.gather(*(cluster.write(f"k{i}", i) for i in range(20)))
        # Checked the moment all answers are in, before anything else runs on the loop.
        leader = cluster.nodes["leader"]
        assert leader.log.fsync == "batch" and leader.role_obj.replayed + leader.log.synced >= max(a["seq"] for a in answers)
        for answer in answers:
            holders = [f for f in cluster.follower_names if answer["seq"] in seqs_in_log(cluster, f)]
            assert answer["confirmations"] >= quorum and len(holders) >= quorum, (answer, holders)
            assert answer["quorum"] == quorum
        await cluster.settled()


@pytest.mark.gen_test(timeout=60)
async def test_sequence_numbers_are_gap_free_under_concurrency(make_cluster):
    async with make_cluster(MAX_DELAY="30") as cluster:
        answers = await asyncio.gather(*(cluster.write(f"k{i % 7}", i) for i in range(60)))
        assert sorted(a["seq"] for a in answers) == list(range(1, 61))


@pytest.mark.gen_test(timeout=60)
async def test_every_follower_equals_the_leader_once_settled(make_cluster):
    async with make_cluster(WRITE_QUORUM="1", MAX_DELAY="80") as cluster:
        await asyncio.gather(*(cluster.write(f"k{i % 10}", i) for i in range(50)))
        await cluster.request("leader", "DELETE", "/delete/k3")
        await cluster.write("after-delete", True)
        await cluster.settled()
        _, leader_all = await cluster.request("leader", "GET", "/all")
        assert "k3" not in leader_all["data"]
        for name in cluster.follower_names:
            status, answer = await cluster.request(name, "GET", "/all")
            assert status == 200 and answer["data"] == leader_all["data"]
            assert answer["applied_seq"] == leader_all["applied_seq"] == 52


@pytest.mark.gen_test(timeout=60)
async def test_clear_replicates_to_every_follower(make_cluster):
    async with make_cluster(MAX_DELAY="20") as cluster:
        await asyncio.gather(*(cluster.write(f"k{i}", i) for i in range(10)))
        status, answer = await cluster.request("leader", "DELETE", "/clear")
        assert status == 200 and answer["op"] == "clear" and answer["seq"] == 11
        await cluster.settled()
        for name in cluster.nodes:
            assert (await cluster.request(name, "GET", "/keys"))[1]["keys"] == []


@pytest.mark.gen_test(timeout=60)
async def test_writes_to_a_follower_are_refused_naming_the_leader(make_cluster):
    async with make_cluster() as cluster:
        await cluster.write("k", "v")
        await cluster.settled()
        for method, path, body in [("POST", "/write", {"key": "k", "value": "x"}),
                                   ("DELETE", "/delete/k", None), ("DELETE", "/clear", None)]:
            status, answer = await cluster.request("follower2", method, path, body)
            assert status == 421 and answer["leader_address"] == cluster.address("leader")
            assert answer["leader_id"] == "leader" and answer["term"] == 1
            assert cluster.address("leader") in answer["error"]
        for name in cluster.nodes:
            assert (await cluster.request(name, "GET", "/read/k"))[1]["value"] == "v"
        assert cluster.nodes["leader"].last_seq == 1


@pytest.mark.gen_test(timeout=60)
async def test_down_follower_does_not_delay_writes_and_catches_up_after_restart(make_cluster):
    async with make_cluster(WRITE_QUORUM="4", MAX_DELAY="20") as cluster:
        await cluster.write("before", 1)
        await cluster.settled()
        await cluster.stop("follower3")
        answers = await asyncio.gather(*(cluster.write(f"k{i}", i) for i in range(15)))
        assert all(a["confirmations"] >= 4 for a in answers)
        await cluster.start("follower3")  # same data directory: replays, then pulls what it missed
        await cluster.settled()
        leader_log = [e for e in iter_entries(cluster.nodes["leader"].log.path)]
        follower_log = {e.seq: e for e in iter_entries(cluster.nodes["follower3"].log.path)}
        assert {e.seq: e for e in leader_log} == follower_log


@pytest.mark.gen_test(timeout=60)
async def test_quorum_of_five_times_out_with_a_follower_down_and_keeps_replicating(make_cluster):
    async with make_cluster(WRITE_QUORUM="5", MAX_DELAY="10", WRITE_TIMEOUT="300") as cluster:
        await cluster.stop("follower5")
        status, answer = await cluster.request("leader", "POST", "/write", {"key": "k", "value": 1})
        assert status == 504 and answer["confirmations"] == 4 and answer["quorum"] == 5
        assert "4 of 5 required" in answer["error"]
        await cluster.start("follower5")
        await cluster.settled()
        assert (await cluster.request("follower5", "GET", "/read/k"))[1]["value"] == 1


@pytest.mark.gen_test(timeout=60)
async def test_restarted_leader_continues_numbering_and_followers_accept_new_writes(make_cluster):
    async with make_cluster(MAX_DELAY="10") as cluster:
        for i in range(5):
            await cluster.write(f"k{i}", i)
        await cluster.stop("leader")
        await cluster.start("leader")
        assert (await cluster.request("leader", "GET", "/read/k4"))[1]["value"] == 4
        answer = await cluster.write("new", "after restart")
        assert answer["seq"] == 6
        await cluster.settled()
        for name in cluster.follower_names:
            assert (await cluster.request(name, "GET", "/read/new"))[1]["value"] == "after restart"


@pytest.mark.gen_test(timeout=60)
async def test_status_reports_progress_and_lag(make_cluster):
    async with make_cluster(WRITE_QUORUM="5", MAX_DELAY="5") as cluster:
        for i in range(3):
            await cluster.write(f"k{i}", i)
        _, leader = await cluster.request("leader", "GET", "/status")
        assert leader["role"] == "leader" and leader["last_seq"] == 3
        assert all(f["acked_seq"] == 3 and f["lag"] == 0 for f in leader["followers"].values())
        await cluster.settled()
        _, follower = await cluster.request("follower1", "GET", "/status")
        assert follower["role"] == "follower" and follower["applied_seq"] == 3 and follower["received_seq"] == 3


@pytest.mark.gen_test(timeout=60)
async def test_graceful_leader_stop_lets_writes_in_progress_get_their_answer(make_cluster):
    async with make_cluster(MIN_DELAY="100", MAX_DELAY="150") as cluster:
        leader = cluster.nodes["leader"]
        pending = asyncio.ensure_future(cluster.request("leader", "POST", "/write", {"key": "k", "value": 1}))
        while leader.writes.count == 0:
            await asyncio.sleep(0.005)
        await cluster.stop("leader")
        status, answer = await pending
        assert status == 200 and answer["confirmations"] >= 2


@pytest.mark.gen_test(timeout=60)
async def test_catch_up_pages_through_a_long_log(make_cluster):
    import dataclasses

    async with make_cluster(MAX_DELAY="5") as cluster:
        leader = cluster.nodes["leader"]
        leader.limits = dataclasses.replace(leader.limits, log_page_bytes=300)  # about two entries a page
        await cluster.stop("follower1")
        for i in range(15):
            await cluster.write(f"k{i}", "x" * 50)
        await cluster.start("follower1")
        await cluster.settled()
        status, answer = await cluster.request("follower1", "GET", "/all")
        assert answer["count"] == 15 and answer["applied_seq"] == 15


@pytest.mark.gen_test(timeout=60)
async def test_leader_restarted_on_an_empty_data_dir_cannot_silently_rewrite_history(make_cluster, tmp_path):
    import shutil

    async with make_cluster(MAX_DELAY="5", WRITE_TIMEOUT="500") as cluster:
        for i in range(3):
            await cluster.write(f"k{i}", i)
        await cluster.settled()
        await cluster.stop("leader")
        shutil.rmtree(tmp_path / "leader")  # the leader's log is lost: numbering would restart at 1
        await cluster.start("leader")
        status, answer = await cluster.request("leader", "POST", "/write", {"key": "new", "value": "history"})
        # No follower acknowledges seq 1 again as a duplicate: the write is refused loudly.
        assert status == 504 and answer["confirmations"] == 0
        for name in cluster.follower_names:
            _, data = await cluster.request(name, "GET", "/all")
            assert data["data"] == {"k0": 0, "k1": 1, "k2": 2}
            _, follower = await cluster.request(name, "GET", "/status")
            assert "leader" in follower["last_conflict"]
        _, leader = await cluster.request("leader", "GET", "/status")
        assert all("refused" in f["last_error"] for f in leader["followers"].values())


@pytest.mark.gen_test(timeout=60)
async def test_delay_seed_repeats_the_same_draws(make_cluster):
    draws = []
    for _ in range(2):
        async with make_cluster(MAX_DELAY="30", DELAY_SEED="7") as cluster:
            answers = [await cluster.write(f"k{i}", i) for i in range(3)]
            draws.append([sorted(a["debug"]["replication_delays_ms"].values()) for a in answers])
    assert draws[0] == draws[1] and len({tuple(d) for d in draws[0]}) == 3


@pytest.mark.gen_test(timeout=60)
async def test_no_retry_storm_against_a_follower_that_is_down(make_cluster, monkeypatch):
    from node.core import shipping

    monkeypatch.setattr(shipping, "DOWN_AFTER_S", 0.2)
    async with make_cluster(MAX_DELAY="5") as cluster:
        await cluster.stop("follower4")
        for i in range(20):
            await cluster.write(f"k{i}", i)
        # Without the rule each send to follower4 would go on retrying for RETRY_WINDOW_S (30 s).
        deadline = asyncio.get_running_loop().time() + 5
        while True:
            _, status = await cluster.request("leader", "GET", "/status")
            if status["replications_in_flight"] == 0 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        assert status["replications_in_flight"] == 0
        assert status["followers"][cluster.address("follower4")]["last_error"]
        await cluster.start("follower4")  # back: it pulls everything it missed
        await cluster.settled()


@pytest.mark.gen_test(timeout=60)
async def test_entries_due_together_share_a_request_and_none_goes_before_its_delay(make_cluster):
    async with make_cluster(WRITE_QUORUM="5", MIN_DELAY="150", MAX_DELAY="150") as cluster:
        loop = asyncio.get_running_loop()
        started = loop.time()
        answers = await asyncio.gather(*(cluster.write(f"k{i}", i) for i in range(40)))
        elapsed = loop.time() - started
        assert sorted(a["seq"] for a in answers) == list(range(1, 41))
        # Every send waited its own 150 ms: no write can be acknowledged sooner.
        assert elapsed >= 0.15
        _, status = await cluster.request("leader", "GET", "/status")
        for follower in status["followers"].values():
            # 40 entries falling due within a few ms of each other travel in far fewer requests.
            assert follower["acked_seq"] == 40
            assert follower["requests"] < 40 and follower["entries_per_request"] > 1, follower
        await cluster.settled()


@pytest.mark.gen_test(timeout=60)
async def test_a_follower_answering_slowly_gets_what_fell_due_meanwhile_in_one_request(make_cluster):
    async with make_cluster(WRITE_QUORUM="4", MIN_DELAY="0", MAX_DELAY="0") as cluster:
        await cluster.write("warm", 0)
        follower5 = cluster.nodes["follower5"]
        real_accept = follower5.accept
        release = asyncio.Event()

        def held_accept(entries):  # durable only once released: the leader's request stays out
            stored = real_accept(entries)
            held = asyncio.get_running_loop().create_future()

            async def later():
                await release.wait()
                await stored
                held.set_result(None)

            asyncio.ensure_future(later())
            return held

        follower5.accept = held_accept
        answers = await asyncio.gather(*(cluster.write(f"k{i}", i) for i in range(30)))
        assert all(a["confirmations"] >= 4 for a in answers)
        before = (await cluster.request("leader", "GET", "/status"))[1]["followers"][cluster.address("follower5")]
        release.set()
        await cluster.settled()
        after = (await cluster.request("leader", "GET", "/status"))[1]["followers"][cluster.address("follower5")]
        # One request was out while 30 entries fell due; they follow in one more (or very few).
        assert after["acked_seq"] == 31
        assert after["requests"] - before["requests"] <= 3, (before, after)


@pytest.mark.gen_test(timeout=60)
async def test_a_value_nested_to_the_limit_replicates_inside_a_batch(make_cluster):
    from node.limits import MAX_JSON_DEPTH

    deepest = 0
    for _ in range(MAX_JSON_DEPTH - 2):  # the body {"key":..., "value": ...} adds one level, the list one
        deepest = [deepest]
    async with make_cluster(WRITE_QUORUM="5", MIN_DELAY="20", MAX_DELAY="20") as cluster:
        answers = await asyncio.gather(*(cluster.write(f"k{i}", deepest) for i in range(3)))
        assert all(a["confirmations"] == 5 for a in answers)
        _, status = await cluster.request("leader", "GET", "/status")
        assert all(f["entries_per_request"] >= 1 and f["last_error"] is None for f in status["followers"].values())


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_no_entry_is_sent_before_its_own_delay(loop_kind):
    """The loop's timers can fire early (uvloop's by up to about a millisecond); the leader's
    wakeup re-arms them, and the core releases nothing before its drawn time."""
    import random
    import time

    import uvloop

    from node.core.leading import LeaderCore
    from node.log import Entry
    from node.wakeup import Wakeup

    async def scenario():
        core = LeaderCore(["f1"], quorum=1, timeout_ms=60_000, min_delay_ms=0.5, max_delay_ms=20,
                          rng=random.Random(7))
        lateness = {}  # seq -> when it was sent, after its drawn due time

        def step():
            now = time.monotonic()
            for batch in core.ready(now).sends:
                for d in batch.entries:
                    lateness[d.seq] = now - d.due_at
                core.answered("f1", 0, "f1", now)
            wakeup.arm(core.next_deadline())

        wakeup = Wakeup(step)
        for seq in range(1, 301):
            core.append(Entry(seq, "set", "k", seq, 0.0), b"{}", time.monotonic())
            wakeup.arm(core.next_deadline())
            busy_until = time.perf_counter() + 0.0002  # some work between writes, as in a busy leader
            while time.perf_counter() < busy_until:
                pass
            if seq % 10 == 0:
                await asyncio.sleep(0.001)
        deadline = time.monotonic() + 10
        while len(lateness) < 300 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return list(lateness.values())

    runner = uvloop.run if loop_kind == "uvloop" else asyncio.run
    lateness = runner(scenario())
    assert len(lateness) == 300
    assert min(lateness) >= 0, f"an entry was sent {-min(lateness) * 1000:.3f} ms before its delay"


@pytest.mark.gen_test(timeout=60)
async def test_a_write_still_waiting_at_shutdown_is_answered_503_outcome_unknown(make_cluster):
    async with make_cluster(WRITE_QUORUM="5", MAX_DELAY="0", WRITE_TIMEOUT="60000") as cluster:
        await cluster.stop("follower5")  # quorum 5 cannot be reached now
        pending = asyncio.ensure_future(cluster.request("leader", "POST", "/write", {"key": "k", "value": 1}))
        leader = cluster.nodes["leader"]
        while leader.status()["followers"][cluster.address("follower1")]["acked_seq"] < 1:
            await asyncio.sleep(0.01)  # the write reached the live followers and waits for the fifth
        await leader.drain(0.05)
        status, answer = await pending
        assert status == 503 and answer["outcome"] == "unknown" and answer["seq"] == 1
        assert answer["confirmations"] == 4 and answer["quorum"] == 5 and "shutting down" in answer["error"]


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_the_wakeup_never_calls_back_before_its_deadline(loop_kind):
    """uvloop's timers fire up to about a millisecond early; the wakeup waits for the rest."""
    import random
    import time

    import uvloop

    from node.wakeup import Wakeup

    async def scenario():
        lateness, rng = [], random.Random(3)
        for _ in range(100):
            fired = asyncio.Event()
            when = time.monotonic() + rng.uniform(0.0005, 0.01)

            def called_back(when: float = when, fired: asyncio.Event = fired) -> None:
                lateness.append(time.monotonic() - when)
                fired.set()

            Wakeup(called_back).arm(when)
            await asyncio.wait_for(fired.wait(), 5)
        return lateness

    lateness = (uvloop.run if loop_kind == "uvloop" else asyncio.run)(scenario())
    assert len(lateness) == 100 and min(lateness) >= 0, f"called back {-min(lateness) * 1000:.3f} ms early"


@pytest.mark.gen_test(timeout=60)
async def test_an_entry_a_follower_pulled_early_does_not_cut_its_delay_short(make_cluster):
    """Catch-up every 50 ms pulls entries long before their 300 ms delays run out; the write is
    still acknowledged only once a push, sent after its delay, confirms it."""
    async with make_cluster(WRITE_QUORUM="1", MIN_DELAY="300", MAX_DELAY="300", CATCHUP_INTERVAL="50") as cluster:
        loop = asyncio.get_running_loop()
        for i in range(4):
            started = loop.time()
            await cluster.write(f"k{i}", i)
            assert loop.time() - started >= 0.3
        await cluster.settled()
