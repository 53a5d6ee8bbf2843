"""Snapshot files: whole or detected as damaged, never half-trusted; an older one as fallback."""

from __future__ import annotations

import os

import pytest

from node import snapshot as snap
from node.snapshot import Snapshot, SnapshotError

STATE = {"a": 1, "b": {"nested": [1, 2]}, "café/☕": "ok"}


def make(seq: int, data=None) -> Snapshot:
    return Snapshot(seq=seq, term=2, history=((1, 1, "leader"), (2, 40, "follower3")), data=dict(data or STATE))


def test_a_snapshot_reads_back_as_written(tmp_path):
    path = snap.write(str(tmp_path), make(57))
    assert os.path.basename(path) == "snapshot-00000000000000000057.snap"
    assert snap.read(path) == make(57)
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")]


def damage(path: str, change) -> None:
    with open(path, "rb") as f:
        data = bytearray(f.read())
    with open(path, "wb") as f:
        f.write(change(data))


@pytest.mark.parametrize("change, words", [
    (lambda d: d[:-10], "torn write"),  # cut in the state
    (lambda d: d[:-3] + bytes([d[-3] ^ 0x01]) + d[-2:], "state's checksum does not match"),
    (lambda d: d.replace(b'"seq":57', b'"seq":58'), "header's checksum does not match"),
    (lambda d: d.replace(b"#kvsnap 1", b"#kvsnap 9"), "not #kvsnap 1"),
    (lambda d: b"", "not #kvsnap 1"),
])
def test_a_damaged_snapshot_is_refused_naming_the_file_and_the_damage(tmp_path, change, words):
    path = snap.write(str(tmp_path), make(57))
    damage(path, change)
    with pytest.raises(SnapshotError) as refused:
        snap.read(path)
    assert path in str(refused.value) and words in str(refused.value)


def test_the_newest_valid_snapshot_is_used_and_a_damaged_newer_one_is_reported(tmp_path):
    data_dir = str(tmp_path)
    snap.write(data_dir, make(10, {"k": "old"}))
    newest = snap.write(data_dir, make(20, {"k": "new"}))
    damage(newest, lambda d: d[:-5])
    found, skipped = snap.newest_valid(data_dir)
    assert found.seq == 10 and found.data == {"k": "old"}
    assert len(skipped) == 1 and newest in skipped[0]


def test_without_snapshots_there_is_nothing_to_load(tmp_path):
    assert snap.newest_valid(str(tmp_path)) == (None, [])


def test_prune_keeps_the_newest_and_orders_by_seq_not_by_name_length(tmp_path):
    data_dir = str(tmp_path)
    for seq in (9, 10, 100, 2):
        snap.write(data_dir, make(seq))
    removed = snap.prune(data_dir, keep=2)
    assert [snap.read(p).seq for p in snap.paths(data_dir)] == [100, 10]
    assert sorted(os.path.basename(p) for p in removed) == [snap.file_name(2), snap.file_name(9)]
    with pytest.raises(ValueError):
        snap.prune(data_dir, keep=0)
