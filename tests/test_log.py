"""The replication log: append and replay, torn tails, damage in the middle, durability policies."""

import asyncio
import os

import pytest

from node.log import HEADER, LOG_FILE_NAME, Entry, LogCorruptError, LogFile, encode_record, scan


def entry(seq, key="k", value=None, op="set"):
    return Entry(seq=seq, op=op, key=key, value=value if value is not None else seq, ts=1000.0 + seq)


def write_log(tmp_path, entries, tail=b""):
    path = tmp_path / LOG_FILE_NAME
    path.write_bytes(HEADER + b"".join(encode_record(e) for e in entries) + tail)
    return path


def test_append_then_reopen_replays_everything(tmp_path):
    log, entries = LogFile.open(str(tmp_path), "batch")
    assert entries == []
    written = [entry(1), entry(2, value={"nested": [1, "ü"]}), entry(3, op="delete", value=None),
               Entry(4, "clear", None, None, 9.5)]
    for e in written:
        log.append(e)
    log.close()
    _, replayed = LogFile.open(str(tmp_path), "batch")
    assert replayed == [Entry(1, "set", "k", 1, 1001.0), written[1], Entry(3, "delete", "k", 3, 1003.0), written[3]]


def test_file_starts_with_versioned_header(tmp_path):
    log, _ = LogFile.open(str(tmp_path), "off")
    log.append(entry(1))
    log.close()
    assert (tmp_path / LOG_FILE_NAME).read_bytes().startswith(b"#kvlog 2\n")


@pytest.mark.parametrize("cut", [1, 5, 12, -2, -1])
def test_torn_last_record_is_dropped_and_truncated(tmp_path, cut):
    full = encode_record(entry(3))
    path = write_log(tmp_path, [entry(1), entry(2)], tail=full[:cut])
    log, entries = LogFile.open(str(tmp_path), "batch")
    assert [e.seq for e in entries] == [1, 2]
    log.append(entry(3))
    log.close()
    assert [e.seq for e in LogFile.open(str(tmp_path), "batch")[1]] == [1, 2, 3]
    assert path.read_bytes().endswith(full)


def test_damaged_last_record_with_newline_counts_as_torn(tmp_path):
    bad = bytearray(encode_record(entry(2)))
    bad[15] ^= 0x01
    write_log(tmp_path, [entry(1)], tail=bytes(bad))
    _, entries = LogFile.open(str(tmp_path), "batch")
    assert [e.seq for e in entries] == [1]


def test_corrupt_middle_record_names_file_and_offset(tmp_path):
    path = write_log(tmp_path, [entry(1), entry(2), entry(3)])
    data = bytearray(path.read_bytes())
    second = len(HEADER) + len(encode_record(entry(1)))
    data[second + 20] ^= 0x20  # flip one bit inside record 2's JSON
    path.write_bytes(bytes(data))
    with pytest.raises(LogCorruptError) as err:
        LogFile.open(str(tmp_path), "batch")
    assert err.value.offset == second
    assert str(path) in str(err.value) and f"offset {second}" in str(err.value)
    assert "checksum mismatch" in str(err.value)


def test_file_without_header_is_rejected(tmp_path):
    (tmp_path / LOG_FILE_NAME).write_bytes(b"hello world\n")
    with pytest.raises(LogCorruptError, match="missing header"):
        LogFile.open(str(tmp_path), "batch")


def test_scan_reports_records_with_offsets(tmp_path):
    path = write_log(tmp_path, [entry(5), entry(2)])
    records, end, torn = scan(str(path))
    assert [r.entry.seq for r in records] == [5, 2]
    assert records[0].offset == len(HEADER) and end == os.path.getsize(path) and torn is None


@pytest.mark.gen_test
async def test_batch_policy_groups_concurrent_syncs(tmp_path, monkeypatch):
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    log, _ = LogFile.open(str(tmp_path), "batch")
    calls.clear()

    async def append_and_sync(seq):
        log.append(entry(seq))
        await log.sync()

    await asyncio.gather(*(append_and_sync(s) for s in range(1, 51)))
    assert 1 <= len(calls) < 50  # 50 durable entries, far fewer syncs
    log.close()


@pytest.mark.gen_test
async def test_always_policy_syncs_every_waiter(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    log, _ = LogFile.open(str(tmp_path), "always")
    calls.clear()
    for seq in range(1, 6):
        log.append(entry(seq))
        await log.sync()
    assert len(calls) == 5


@pytest.mark.gen_test
async def test_off_policy_never_syncs(tmp_path, monkeypatch):
    log, _ = LogFile.open(str(tmp_path), "off")
    calls = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    log.append(entry(1))
    await log.sync()
    assert calls == []


def test_fingerprints_tell_redelivery_from_a_different_entry():
    from node.log import Fingerprints, fingerprint

    prints = Fingerprints()
    far = 10 + Fingerprints.DENSE_GROWTH * 3  # a jump ahead is kept without a huge allocation
    for seq in (3, 1, far):
        prints.set(seq, fingerprint(entry(seq)))
    assert prints.get(2) == 0 and prints.get(far - 1) == 0
    assert prints.get(1) == fingerprint(entry(1)) and prints.get(far) == fingerprint(entry(far))
    assert fingerprint(entry(3)) != fingerprint(entry(3, value="other"))
    for seq in range(4, far):  # filling the hole moves into the dense array; the far one stays
        prints.set(seq, 7)
    assert prints.get(far) == fingerprint(entry(far)) and prints.get(far - 1) == 7


@pytest.mark.parametrize("slow_disk", [False, True])
@pytest.mark.gen_test
async def test_group_commit_runs_on_the_loop_while_quick_and_in_the_sync_thread_once_slow(tmp_path, monkeypatch, slow_disk):
    import threading
    import time

    from node import log as logmodule

    threads = []
    real_fsync = os.fsync

    def fsync(fd):
        threads.append(threading.current_thread() is threading.main_thread())
        if slow_disk:
            time.sleep(0.005)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(logmodule, "INLINE_SYNC_MAX_S", 0.002)
    log, _ = LogFile.open(str(tmp_path), "batch")
    threads.clear()
    for round_ in range(12):
        await asyncio.gather(*(append_then_sync(log, 10 * round_ + i) for i in range(1, 6)))
    assert len(threads) == 12  # five writers per round share one fsync
    # Quick syncs stay on the loop; slow ones move to the sync thread after a few.
    assert all(threads) if not slow_disk else (threads[0] and not any(threads[-5:]))
    log.close()


async def append_then_sync(log, seq):
    log.append(entry(seq))
    await log.sync()


@pytest.mark.gen_test
async def test_records_appended_while_a_sync_runs_wait_for_the_next_one(tmp_path, monkeypatch, held_fsync):
    from node import log as logmodule

    monkeypatch.setattr(logmodule, "INLINE_SYNC_MAX_S", 0.0)  # every sync in the thread
    log, _ = LogFile.open(str(tmp_path), "batch")
    held = held_fsync()
    log.inline_sync = False
    log.append(entry(1))
    first = log.sync_future()
    assert await held.started()  # the first fsync runs
    log.append(entry(2))
    second = log.sync_future()
    assert second is not first
    held.release.set()
    await second
    assert first.done() and log.synced == log.appended == 2
    log.close()


@pytest.mark.gen_test
@pytest.mark.parametrize("policy", ["batch", "always"])
async def test_start_sync_makes_what_was_appended_durable_once_without_a_waiter(tmp_path, monkeypatch, policy):
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    log, _ = LogFile.open(str(tmp_path), policy)
    calls.clear()
    log.append(entry(1))
    log.append(entry(2))
    for _ in range(5):  # one shipment per follower: still one sync
        log.start_sync()
    done = log.sync_future(upto=2)
    await done
    assert len(calls) == 1
    assert log.sync_future(upto=2).done()  # durable already: no second sync, no wait
    log.append(entry(3))
    assert log.sync_future(upto=2).done() and not log.sync_future(upto=3).done()
    log.close()


@pytest.mark.gen_test
async def test_a_failed_sync_is_tried_again_by_the_next_start_sync(tmp_path, monkeypatch):
    log, _ = LogFile.open(str(tmp_path), "batch")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    log.append(entry(1))
    log.start_sync()
    with pytest.raises(OSError):
        await log.sync_future(upto=1)
    monkeypatch.undo()
    log.start_sync()
    await log.sync_future(upto=1)
    assert log.synced == 1
    log.close()


@pytest.mark.parametrize("value", [
    10**30,                      # beyond 64 bits: orjson refuses, the standard library does not
    "\ud800 lone surrogate",     # likewise
    {"nested": [1.5, "é", None, True]},
])
def test_records_encode_and_decode_whatever_codec_takes_the_value(tmp_path, value):
    from node.log import encode_record, iter_entries

    path = tmp_path / "replication.log"
    path.write_bytes(HEADER + encode_record(entry(1, value=value)))
    assert next(iter_entries(str(path))).value == value


@pytest.mark.gen_test
async def test_compaction_keeps_what_it_is_told_and_everything_appended_after_the_mark(tmp_path):
    log, _ = LogFile.open(str(tmp_path), "batch")
    for seq in range(1, 11):
        log.append(entry(seq))
    await log.sync()
    mark = log.mark()
    kept = [entry(seq) for seq in range(6, 11)]
    compacting = asyncio.ensure_future(log.compact(mark, kept))
    log.append(entry(11))  # after the mark, while the bulk is written: it must survive the swap
    before, after = await compacting
    log.append(entry(12))  # appends go on into the new file
    await log.sync()
    assert after < before and log.synced == log.appended == 12
    log.close()
    _, replayed = LogFile.open(str(tmp_path), "batch")
    assert [e.seq for e in replayed] == [6, 7, 8, 9, 10, 11, 12]
    assert os.listdir(tmp_path) == [LOG_FILE_NAME]


@pytest.mark.gen_test
async def test_a_sync_running_on_the_old_file_during_compaction_still_completes(tmp_path, monkeypatch):
    import threading

    log, _ = LogFile.open(str(tmp_path), "always")
    for seq in range(1, 6):
        log.append(entry(seq))
    await log.sync()
    mark = log.mark()
    old_fd, entered, release = log._file.fileno(), threading.Event(), threading.Event()
    real_fsync = os.fsync

    def held_on_the_old_file(fd):
        if fd == old_fd and not release.is_set():
            entered.set()
            release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", held_on_the_old_file)
    log.append(entry(6))
    waiting = log.sync_future()  # an fsync of the old file, held in the sync thread
    assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)
    await log.compact(mark, [entry(5)])
    release.set()
    await waiting  # no error: the old file was closed only after its fsync
    log.close()
    _, replayed = LogFile.open(str(tmp_path), "always")
    assert [e.seq for e in replayed] == [5, 6]


def test_a_compaction_cut_short_by_a_crash_leaves_the_log_whole(tmp_path):
    write_log(tmp_path, [entry(1), entry(2)])
    (tmp_path / (LOG_FILE_NAME + ".compact")).write_bytes(HEADER + encode_record(entry(2))[:5])
    log, replayed = LogFile.open(str(tmp_path), "batch")
    assert [e.seq for e in replayed] == [1, 2] and os.listdir(tmp_path) == [LOG_FILE_NAME]
    log.close()


def test_a_log_opened_after_a_snapshot_keeps_only_what_follows_yet_checks_every_record(tmp_path):
    write_log(tmp_path, [entry(s) for s in range(1, 11)])
    log, kept = LogFile.open(str(tmp_path), "batch", keep_from=7)
    assert [e.seq for e in kept] == [7, 8, 9, 10]
    log.append(entry(11))
    log.close()
    assert [r.entry.seq for r in scan(str(tmp_path / LOG_FILE_NAME))[0]] == list(range(1, 12))  # the file keeps all
    path = tmp_path / LOG_FILE_NAME
    data = bytearray(path.read_bytes())
    data[len(HEADER) + 12] ^= 1  # damage in a record before keep_from is still damage
    path.write_bytes(bytes(data))
    with pytest.raises(LogCorruptError):
        LogFile.open(str(tmp_path), "batch", keep_from=7)
