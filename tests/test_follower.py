"""The follower's adapter without HTTP: entries durable in its log on arrival, applied in
sequence order, conflicts refused, across restarts (the rules alone: tests/core/)."""

import pytest

from node.app import open_node
from node.config import load_config
from node.follower import EntryConflict
from node.log import Entry, iter_entries


def entry(seq, key=None, value=None, op="set"):
    return Entry(seq=seq, op=op, key=key or f"k{seq}", value=value if value is not None else seq, ts=float(seq))


def make_follower(tmp_path):
    config = load_config({"REPLICATION_SECRET": "follower-secret", "ROLE": "follower", "NODE_ID": "f1",
                          "PEERS": "leader=127.0.0.1:1,f1=127.0.0.1:8001", "DATA_DIR": str(tmp_path)})
    return open_node(config)


@pytest.mark.gen_test
async def test_early_entry_is_durable_but_waits_for_its_predecessors(tmp_path):
    follower = make_follower(tmp_path)
    await follower.accept([entry(3)])
    await follower.accept([entry(2)])
    assert follower.store.applied_seq == 0 and follower.store.keys() == []
    assert [e.seq for e in iter_entries(follower.log.path)] == [3, 2]  # arrival order on disk
    await follower.accept([entry(1)])
    assert follower.store.applied_seq == 3
    assert follower.store.snapshot() == {"k1": 1, "k2": 2, "k3": 3}


@pytest.mark.gen_test
async def test_state_is_always_a_prefix_the_leader_had(tmp_path):
    follower = make_follower(tmp_path)
    ops = [entry(1, "x", "a"), entry(2, "x", "b"), entry(3, "x", op="delete", value=None), entry(4, "x", "c")]
    leader_states = [{"x": "a"}, {"x": "b"}, {}, {"x": "c"}]
    seen = []
    for e in [ops[3], ops[1], ops[0], ops[2]]:
        await follower.accept([e])
        seen.append(follower.store.snapshot())
    assert all(state in [{}] + leader_states for state in seen)
    assert seen[-1] == {"x": "c"}


@pytest.mark.gen_test
async def test_duplicate_delivery_is_harmless(tmp_path):
    follower = make_follower(tmp_path)
    for e in [entry(1), entry(2), entry(1), entry(2), entry(2)]:
        await follower.accept([e])
    assert follower.store.applied_seq == 2
    assert [e.seq for e in iter_entries(follower.log.path)] == [1, 2]


@pytest.mark.gen_test
async def test_different_entry_under_a_held_seq_is_a_conflict(tmp_path):
    follower = make_follower(tmp_path)
    await follower.accept([entry(2, "a", 1)])
    with pytest.raises(EntryConflict, match="seq 2: the leader sent an entry that differs"):
        await follower.accept([entry(2, "a", 999)])


@pytest.mark.gen_test
async def test_a_different_entry_under_an_applied_seq_is_a_conflict_too(tmp_path):
    follower = make_follower(tmp_path)
    for seq in (1, 2):
        await follower.accept([entry(seq)])
    await follower.accept([entry(1)])  # the same entry again: harmless
    with pytest.raises(EntryConflict):
        await follower.accept([Entry(1, "set", "other", "history", 99.0)])
    assert follower.store.snapshot() == {"k1": 1, "k2": 2}
    assert "leader's log was replaced" in follower.status()["last_conflict"]


@pytest.mark.gen_test
async def test_conflicts_survive_a_restart(tmp_path):
    follower = make_follower(tmp_path)
    await follower.accept([entry(1)])
    await follower.close()
    again = make_follower(tmp_path)
    with pytest.raises(EntryConflict):
        await again.accept([Entry(1, "set", "k1", "new", 5.0)])
    await again.close()


@pytest.mark.gen_test
async def test_clear_applies_in_order(tmp_path):
    follower = make_follower(tmp_path)
    await follower.accept([Entry(2, "clear", None, None, 2.0)])
    await follower.accept([entry(3, "after")])
    await follower.accept([entry(1, "before")])
    assert follower.store.snapshot() == {"after": 3}


@pytest.mark.gen_test
async def test_restart_rebuilds_state_from_an_arrival_order_log(tmp_path):
    follower = make_follower(tmp_path)
    for seq in [2, 4, 1, 5]:
        await follower.accept([entry(seq)])
    await follower.close()
    again = make_follower(tmp_path)
    assert again.store.applied_seq == 2 and sorted(again.role_obj.core.pending) == [4, 5]
    await again.accept([entry(3)])
    assert again.store.applied_seq == 5
    await again.close()


@pytest.mark.gen_test
async def test_a_batch_with_one_conflicting_entry_changes_nothing(tmp_path):
    follower = make_follower(tmp_path)
    await follower.accept([entry(1), entry(2)])
    appended_before = len(list(iter_entries(follower.log.path)))
    with pytest.raises(EntryConflict):
        await follower.accept([entry(3), entry(2, value="different"), entry(4)])
    assert len(list(iter_entries(follower.log.path))) == appended_before
    assert follower.store.applied_seq == 2 and follower.role_obj.core.received_max == 2


@pytest.mark.gen_test
async def test_a_batch_is_durable_and_applied_in_order_whatever_its_order(tmp_path):
    follower = make_follower(tmp_path)
    await follower.accept([entry(3), entry(1), entry(2), entry(1)])  # with a duplicate
    assert follower.store.applied_seq == 3
    assert [e.seq for e in iter_entries(follower.log.path)] == [3, 1, 2]


@pytest.mark.gen_test
async def test_a_stopping_follower_refuses_new_entries_and_keeps_what_it_has(tmp_path):
    from node.follower import ShuttingDown

    follower = make_follower(tmp_path)
    await follower.accept([entry(1)])
    await follower.drain(1.0)
    with pytest.raises(ShuttingDown, match="shutting down"):
        await follower.accept([entry(2)])
    assert [e.seq for e in iter_entries(follower.log.path)] == [1]


@pytest.mark.gen_test
async def test_an_entry_whose_write_failed_is_stored_when_it_comes_again(tmp_path, monkeypatch):
    follower = make_follower(tmp_path)
    real_append = follower.log.append_records

    def failing_append(records):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(follower.log, "append_records", failing_append)
    with pytest.raises(OSError):
        follower.accept([entry(1)])
    monkeypatch.setattr(follower.log, "append_records", real_append)
    await follower.accept([entry(1)])  # not a duplicate: it was never written
    assert [e.seq for e in iter_entries(follower.log.path)] == [1] and follower.store.applied_seq == 1
