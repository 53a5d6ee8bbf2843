"""``python -m node.logtool``: show, verify and compare logs by sequence number."""

import pytest

from node import logtool
from node.log import HEADER, LOG_FILE_NAME, Entry, encode_record


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
