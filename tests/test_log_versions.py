"""Log format versions: version 2 records carry the term, version 1 logs are read as term 1 and
upgraded on open, a version this build does not know is refused."""

import json
import logging
import os
import stat
import zlib

import pytest

from node.log import (
    HEADER,
    LOG_FILE_NAME,
    UPGRADE_SUFFIX,
    Entry,
    EntryError,
    LogCorruptError,
    LogFile,
    LogVersionError,
    encode_record,
    fingerprint,
    read_log,
)
from node.store import Store

V1_HEADER = b"#kvlog 1\n"


def v1_record(seq, op, key, value, ts):
    """A record byte for byte as builds before terms wrote it: CRC-32, a space, compact JSON of
    the five fields with sorted keys (UTF-8, not ASCII-escaped), a newline."""
    body = json.dumps({"seq": seq, "op": op, "key": key, "value": value, "ts": ts},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


# seq, op, key, value, ts: one of each op, a nested non-ASCII value, a key set twice.
V1_ENTRIES = [
    (1, "set", "x", 1, 1001.0),
    (2, "clear", None, None, 1002.0),
    (3, "set", "y", {"nested": [1, "ü", None]}, 1003.5),
    (4, "set", "x", 4, 1004.0),
    (5, "delete", "x", None, 1005.0),
    (6, "set", "z", "again", 1006.0),
]


def v1_log(entries=V1_ENTRIES, tail=b""):
    return V1_HEADER + b"".join(v1_record(*fields) for fields in entries) + tail


def write(tmp_path, data):
    path = tmp_path / LOG_FILE_NAME
    path.write_bytes(data)
    return path


def test_v1_record_helper_matches_the_bytes_builds_before_terms_wrote():
    # Literal records as written by the last build before terms (commit 2a9d048).
    assert v1_record(*V1_ENTRIES[0]) == b'c9f8e7d8 {"key":"x","op":"set","seq":1,"ts":1001.0,"value":1}\n'
    assert v1_record(*V1_ENTRIES[1]) == b'19775f7d {"key":null,"op":"clear","seq":2,"ts":1002.0,"value":null}\n'
    assert v1_record(*V1_ENTRIES[2]) == (b'ecb4c4d2 {"key":"y","op":"set","seq":3,"ts":1003.5,'
                                         b'"value":{"nested":[1,"\xc3\xbc",null]}}\n')


def test_v2_round_trip_keeps_terms(tmp_path):
    written = [Entry(1, "set", "a", 1, 1.0), Entry(2, "set", "b", [2], 2.0, term=3),
               Entry(3, "delete", "a", None, 3.0, term=3), Entry(4, "clear", None, None, 4.0, term=7)]
    log, _ = LogFile.open(str(tmp_path), "off")
    for e in written:
        log.append(e)
    log.close()
    data = (tmp_path / LOG_FILE_NAME).read_bytes()
    assert data.startswith(b"#kvlog 2\n") and HEADER == b"#kvlog 2\n"
    assert [json.loads(line.split(b" ", 1)[1])["term"] for line in data.splitlines()[1:]] == [1, 3, 3, 7]
    _, replayed = LogFile.open(str(tmp_path), "off")
    assert replayed == written and [e.term for e in replayed] == [1, 3, 3, 7]


def test_v1_log_opens_as_term_1_with_every_entry_and_the_state_and_is_upgraded_to_v2(tmp_path, caplog):
    path = write(tmp_path, v1_log())
    with caplog.at_level(logging.INFO, logger="node.log"):
        log, entries = LogFile.open(str(tmp_path), "off")
    expected = [Entry(*fields) for fields in V1_ENTRIES]
    assert entries == expected and {e.term for e in entries} == {1}
    store = Store()
    for e in entries:
        store.apply(e)
    assert store.snapshot() == {"y": {"nested": [1, "ü", None]}, "z": "again"}
    assert path.read_bytes() == HEADER + b"".join(encode_record(e) for e in expected)
    upgraded = read_log(str(path))
    assert upgraded.version == 2 and [r.entry for r in upgraded.records] == expected
    notes = [r for r in caplog.records if "upgraded" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO
    assert str(path) in notes[0].getMessage() and "6 records" in notes[0].getMessage()
    log.append(Entry(7, "set", "w", 7, 1007.0, term=2))  # appends land in the upgraded file
    log.close()
    assert LogFile.open(str(tmp_path), "off")[1] == expected + [Entry(7, "set", "w", 7, 1007.0, term=2)]


def test_upgrade_leaves_no_temporary_file_and_reopens_identically(tmp_path, caplog):
    path = write(tmp_path, v1_log())
    os.chmod(path, 0o600)
    first = LogFile.open(str(tmp_path), "off")
    first[0].close()
    assert sorted(os.listdir(tmp_path)) == [LOG_FILE_NAME]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    upgraded = path.read_bytes()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="node.log"):
        second = LogFile.open(str(tmp_path), "off")
    second[0].close()
    assert second[1] == first[1] and path.read_bytes() == upgraded
    assert not [r for r in caplog.records if "upgraded" in r.getMessage()]  # a v2 log is not rewritten


def test_upgrade_syncs_the_new_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    write(tmp_path, v1_log())
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else f"fsync {os.fstat(fd).st_size}")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    log, _ = LogFile.open(str(tmp_path), "off")
    log.close()
    size = os.path.getsize(tmp_path / LOG_FILE_NAME)
    assert events[:3] == [f"fsync {size}", "rename", "fsync dir"]


def test_a_failed_upgrade_leaves_the_v1_log_as_it_was(tmp_path, monkeypatch):
    path = write(tmp_path, v1_log())
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space left"):
        LogFile.open(str(tmp_path), "off")
    assert path.read_bytes() == v1_log()
    assert sorted(os.listdir(tmp_path)) == [LOG_FILE_NAME]
    monkeypatch.undo()
    assert LogFile.open(str(tmp_path), "off")[1] == [Entry(*fields) for fields in V1_ENTRIES]


def test_a_temporary_file_left_by_a_crash_before_the_rename_is_overwritten(tmp_path):
    write(tmp_path, v1_log())
    (tmp_path / (LOG_FILE_NAME + UPGRADE_SUFFIX)).write_bytes(HEADER + b"half a conv")
    _, entries = LogFile.open(str(tmp_path), "off")
    assert len(entries) == len(V1_ENTRIES)
    assert sorted(os.listdir(tmp_path)) == [LOG_FILE_NAME]


def damaged(record):
    """The record with one bit flipped inside its JSON, newline kept."""
    flipped = bytearray(record)
    flipped[15] ^= 0x01
    return bytes(flipped)


@pytest.mark.parametrize("tail", [lambda r: r[:1], lambda r: r[:9], lambda r: r[:20], lambda r: r[:-2],
                                  lambda r: r[:-1], damaged], ids=["1", "9", "20", "-2", "-1", "damaged"])
def test_v1_torn_tail_is_dropped_and_the_rest_upgraded(tmp_path, tail, caplog):
    torn = tail(v1_record(7, "set", "t", "torn", 1007.0))
    path = write(tmp_path, v1_log(tail=torn))
    with caplog.at_level(logging.INFO, logger="node.log"):
        log, entries = LogFile.open(str(tmp_path), "off")
    log.close()
    expected = [Entry(*fields) for fields in V1_ENTRIES]
    assert entries == expected
    assert path.read_bytes() == HEADER + b"".join(encode_record(e) for e in expected)
    assert any(r.levelno == logging.WARNING and "torn tail" in r.getMessage() for r in caplog.records)


def test_v1_damaged_middle_is_refused_and_the_file_left_unchanged(tmp_path):
    data = bytearray(v1_log())
    second = len(V1_HEADER) + len(v1_record(*V1_ENTRIES[0]))
    data[second + 20] ^= 0x20  # one bit inside record 2's JSON
    path = write(tmp_path, bytes(data))
    with pytest.raises(LogCorruptError) as err:
        LogFile.open(str(tmp_path), "off")
    assert err.value.offset == second and "checksum mismatch" in str(err.value)
    assert str(path) in str(err.value) and "move the file aside" in str(err.value)
    assert path.read_bytes() == bytes(data)
    assert sorted(os.listdir(tmp_path)) == [LOG_FILE_NAME]


@pytest.mark.parametrize("header", [b"#kvlog 3\n", b"#kvlog 10\n", b"#kvlog 0\n"])
def test_unknown_version_is_refused_naming_it_and_the_versions_read(tmp_path, header):
    seen = header[7:-1].decode()
    data = header + encode_record(Entry(1, "set", "x", 1, 1.0))
    path = write(tmp_path, data)
    with pytest.raises(LogVersionError) as err:
        LogFile.open(str(tmp_path), "off")
    assert isinstance(err.value, LogCorruptError)  # refused wherever a damaged log is
    message = str(err.value)
    assert f"format version {seen};" in message and "reads versions 1, 2" in message and str(path) in message
    assert path.read_bytes() == data


def test_file_without_header_is_refused_saying_what_it_starts_with(tmp_path):
    write(tmp_path, b"#kvlog two\n")
    with pytest.raises(LogCorruptError, match=r"missing header: the file starts with b'#kvlog two\\n'"):
        LogFile.open(str(tmp_path), "off")


@pytest.mark.parametrize("partial", [b"", b"#kv", b"#kvlog ", b"#kvlog 1", b"#kvlog 2"])
def test_a_header_cut_short_by_a_crash_starts_a_fresh_v2_log(tmp_path, partial):
    path = write(tmp_path, partial)
    log, entries = LogFile.open(str(tmp_path), "off")
    log.close()
    assert entries == [] and path.read_bytes() == HEADER


@pytest.mark.parametrize("header, body, reason", [
    (b"#kvlog 2\n", {"seq": 1, "op": "set", "key": "x", "value": 1, "ts": 1.0}, "a version 2 record must carry a term"),
    (V1_HEADER, {"seq": 1, "op": "set", "key": "x", "value": 1, "ts": 1.0, "term": 2},
     "a version 1 record carries no term, got term 2"),
])
def test_a_record_is_held_to_its_files_version(tmp_path, header, body, reason):
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    record = b"%08x %s\n" % (zlib.crc32(raw), raw)
    path = write(tmp_path, header + record + (v1_record(*V1_ENTRIES[1]) if header == V1_HEADER
                                              else encode_record(Entry(2, "set", "y", 2, 2.0))))
    with pytest.raises(LogCorruptError, match=reason) as err:
        LogFile.open(str(tmp_path), "off")
    assert err.value.offset == len(header) and path.read_bytes().startswith(header)


def test_entries_built_by_position_default_to_term_1_and_to_dict_carries_the_term():
    assert Entry(1, "set", "x", 1, 1.0).term == 1
    assert Entry(1, "set", "x", 1, 1.0, 4).to_dict() == {"seq": 1, "op": "set", "key": "x", "value": 1, "ts": 1.0,
                                                         "term": 4}
    assert fingerprint(Entry(1, "set", "x", 1, 1.0)) != fingerprint(Entry(1, "set", "x", 1, 1.0, term=2))


BASE = {"seq": 1, "op": "set", "key": "x", "value": 1, "ts": 1.0}


@pytest.mark.parametrize("term, expected", [
    ("absent", 1),  # from a node that predates terms
    (1, 1),
    (9, 9),
    (2**40, 2**40),
])
def test_from_dict_accepts_a_missing_term_as_1_and_any_int_from_1(term, expected):
    data = dict(BASE) if term == "absent" else {**BASE, "term": term}
    assert Entry.from_dict(data).term == expected


@pytest.mark.parametrize("term", [0, -1, True, False, 1.0, "1", None, [1]])
def test_from_dict_refuses_a_term_that_is_not_an_int_from_1(term):
    with pytest.raises(EntryError) as err:
        Entry.from_dict({**BASE, "term": term})
    assert str(err.value) == f"entry term must be an integer >= 1, got {term!r}"
