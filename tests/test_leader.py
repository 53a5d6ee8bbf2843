"""The leader's log service: which entries a catch-up request gets."""

import itertools

import pytest

from node.app import open_node
from node.config import load_config
from node.log import Entry, LogFile


@pytest.fixture
def leader(tmp_path):
    log, _ = LogFile.open(str(tmp_path), "off")
    for seq in range(1, 11):
        log.append(Entry(seq, "set", f"k{seq}", seq, float(seq)))
    log.close()
    return open_node(load_config({"ROLE": "leader", "PEERS": "leader=127.0.0.1:8000,f1=127.0.0.1:9", "DATA_DIR": str(tmp_path),
                                  "REPLICATION_SECRET": "leader-secret"}))


def test_replayed_leader_continues_numbering(leader):
    assert leader.last_seq == 10 and leader.store.get("k10") == (10, 10)


@pytest.mark.parametrize("after, upto, limit", list(itertools.product([0, 1, 5, 9, 10, 12], [None, 0, 3, 10, 15], [1, 4, 100])))
def test_entries_between_is_the_slice_after_upto_and_limit(leader, after, upto, limit):
    end = 10 if upto is None else min(upto, 10)
    expected = [seq for seq in range(1, 11) if after < seq <= end][:limit]
    assert [e.seq for e in leader.entries_between(after, upto, limit)] == expected
