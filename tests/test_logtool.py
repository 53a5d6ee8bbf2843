"""``python -m node.logtool``: show, verify and compare logs by sequence number."""

import pytest

from node import logtool
from node.log import HEADER, LOG_FILE_NAME, Entry, encode_record
from tests.test_log_versions import v1_log


def make_log(path, entries, tail=b""):
    path.mkdir(parents=True, exist_ok=True)
    file = path / LOG_FILE_NAME
    file.write_bytes(HEADER + b"".join(encode_record(e) for e in entries) + tail)
    return str(file)


def e(seq, value=None):
    return Entry(seq, "set", f"k{seq}", seq if value is None else value, float(seq))


def test_compare_treats_arrival_order_as_equal(tmp_path):
    leader = make_log(tmp_path / "l", [e(1), e(2), e(3)])
    follower = make_log(tmp_path / "f", [e(3), e(1), e(2)])
    assert logtool.compare_logs([leader, follower])["equal"]
    assert logtool.main(["compare", leader, follower]) == 0


def test_compare_reports_missing_different_and_extra(tmp_path, capsys):
    leader = make_log(tmp_path / "l", [e(1), e(2), e(3), e(4)])
    follower = make_log(tmp_path / "f", [e(1), e(3, value="other"), e(5)])
    report = logtool.compare_logs([leader, follower])["logs"][0]
    assert (report["missing"], report["different"], report["extra"]) == ([2, 4], [3], [5])
    assert logtool.main(["compare", leader, follower]) == 1
    out = capsys.readouterr().out
    assert "missing: 2 seq(s), first [2, 4]" in out and "different: 1 seq(s), first [3]" in out


def test_verify_and_show(tmp_path, capsys):
    path = make_log(tmp_path / "l", [e(1), e(3)], tail=b"0000")
    assert logtool.main(["verify", path]) == 1
    out = capsys.readouterr().out
    assert "2 records, checksums ok, seq 1..3, 1 seq(s) missing in between; torn tail" in out
    assert logtool.main(["show", path]) == 0
    assert "seq=3" in capsys.readouterr().out


def test_damaged_log_exits_2_naming_the_offset(tmp_path, capsys):
    path = make_log(tmp_path / "l", [e(1), e(2)])
    data = bytearray(open(path, "rb").read())
    data[len(HEADER) + 12] ^= 1
    open(path, "wb").write(bytes(data))
    assert logtool.main(["verify", path]) == 2
    assert f"damaged at byte offset {len(HEADER)}" in capsys.readouterr().err


def test_compare_needs_two_logs(tmp_path):
    with pytest.raises(SystemExit):
        logtool.main(["compare", make_log(tmp_path / "l", [e(1)])])


def make_v1_log(path, entries):
    """A version 1 log (no terms) as builds before terms wrote it."""
    path.mkdir(parents=True, exist_ok=True)
    file = path / LOG_FILE_NAME
    file.write_bytes(v1_log([(x.seq, x.op, x.key, x.value, x.ts) for x in entries]))
    return str(file)


def test_show_prints_the_term_of_each_entry(tmp_path, capsys):
    path = make_log(tmp_path / "l", [e(1), Entry(2, "set", "k2", 2, 2.0, term=5)])
    assert logtool.main(["show", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "seq=1 " in lines[0] and "term=1 " in lines[0]
    assert "seq=2 " in lines[1] and "term=5 " in lines[1]


def test_verify_reports_the_format_version(tmp_path, capsys):
    v2 = make_log(tmp_path / "l", [e(1)])
    v1 = make_v1_log(tmp_path / "f", [e(1)])
    assert logtool.main(["verify", v2, v1]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{v2}: format version 2, 1 records, checksums ok, seq 1..1"
    assert out[1].startswith(f"{v1}: format version 1 (read as term 1; a node upgrades it to 2 when it opens it), 1 records")


def test_v1_and_v2_logs_with_the_same_entries_compare_equal_and_the_v1_log_is_not_upgraded(tmp_path, capsys):
    v2 = make_log(tmp_path / "l", [e(1), e(2), e(3)])
    v1 = make_v1_log(tmp_path / "f", [e(3), e(1), e(2)])
    before = open(v1, "rb").read()
    assert logtool.compare_logs([v2, v1])["equal"] and logtool.compare_logs([v1, v2])["equal"]
    assert logtool.main(["compare", v2, v1]) == 0
    assert "equal (3 entries, format version 1" in capsys.readouterr().out
    assert logtool.main(["show", v1]) == 0 and logtool.main(["verify", v1]) == 0
    assert open(v1, "rb").read() == before


def test_compare_reports_an_entry_with_another_term_as_different(tmp_path, capsys):
    leader = make_log(tmp_path / "l", [e(1), Entry(2, "set", "k2", 2, 2.0, term=2)])
    v2 = make_log(tmp_path / "f", [e(1), e(2)])
    v1 = make_v1_log(tmp_path / "g", [e(1), e(2)])
    logs = logtool.compare_logs([leader, v2, v1])["logs"]
    assert [(item["equal"], item["different"]) for item in logs] == [(False, [2]), (False, [2])]
    assert logtool.main(["compare", leader, v2]) == 1
    assert "different: 1 seq(s), first [2]" in capsys.readouterr().out


def test_unknown_version_exits_2_naming_it(tmp_path, capsys):
    path = tmp_path / LOG_FILE_NAME
    path.write_bytes(b"#kvlog 3\n" + encode_record(e(1)))
    assert logtool.main(["verify", str(path)]) == 2
    assert "format version 3; this build reads versions 1, 2" in capsys.readouterr().err


def snap(directory, seq, entries, term=1):
    from node import snapshot as snapshots
    from node.store import build_state

    return snapshots.write(str(directory), snapshots.Snapshot(seq, term, ((1, 1, "leader"),), build_state({}, entries)))


def test_compare_accounts_for_what_a_snapshot_holds_and_compares_the_states(tmp_path, capsys):
    history = [e(s) for s in range(1, 21)]
    leader = make_log(tmp_path / "l", history[9:])  # compacted: the log keeps 10..20
    snap(tmp_path / "l", 12, history[:12])
    follower = make_log(tmp_path / "f", history[15:])  # restored from a snapshot at 15
    snap(tmp_path / "f", 15, history[:15])
    report = logtool.compare_logs([leader, follower])["logs"][0]
    assert report["equal"] and report["missing_count"] == 0 and report["extra_count"] == 0
    assert report["state_seq"] == 20 and report["state_equal"] is True
    assert logtool.main(["compare", leader, follower]) == 0
    assert "after a snapshot at seq 15" in capsys.readouterr().out


def test_compare_finds_a_snapshot_whose_state_differs_and_entries_nobody_holds(tmp_path):
    history = [e(s) for s in range(1, 21)]
    leader = make_log(tmp_path / "l", history)
    follower = make_log(tmp_path / "f", history[15:18])  # 19 and 20 never arrived
    snap(tmp_path / "f", 15, history[:14] + [e(15, value="not what the leader had")])
    report = logtool.compare_logs([leader, follower])["logs"][0]
    assert report["state_equal"] is False and report["state_seq"] == 18
    assert report["missing"] == [19, 20] and not report["equal"]


def test_show_and_verify_read_snapshots_and_report_damage(tmp_path, capsys):
    path = snap(tmp_path / "l", 3, [e(1), e(2), e(3, value="three")])
    assert logtool.main(["verify", path]) == 0
    assert "snapshot format version 1, checksums ok, seq 3, term 1, 3 keys" in capsys.readouterr().out
    assert logtool.main(["show", path]) == 0
    assert "key='k3'  seq=3        value=\"three\"" in capsys.readouterr().out
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-4] + b"xxx\n")
    assert logtool.main(["verify", path]) == 2
    assert "is damaged" in capsys.readouterr().err
