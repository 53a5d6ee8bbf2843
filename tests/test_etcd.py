"""node.etcd against a real one-member etcd (node.etcd_local): leases, the leader lock, the term
counter, endpoint failover and bounded calls.

Without etcd on PATH these tests skip on a workstation and fail under ``CI=true`` (``make test``
installs it when run as root).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from node.etcd import Acquired, EtcdClient, EtcdError, EtcdUnavailable, LeaseGone, TermPassed, parse_endpoints
from node.etcd_local import etcd_binary, free_ports, start_etcd

EXPIRY_WAIT_S = 8.0  # etcd 3.4 rounds a 1 s TTL up to its minimum (2 s here); expiry is checked every 0.5 s


def require_etcd() -> None:
    if etcd_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("CI=true and etcd is required for the coordinator tests: apt-get install etcd-server")
        pytest.skip("etcd not on PATH (apt-get install etcd-server, or make test as root)")


@pytest.fixture(scope="module")
def etcd_server():
    require_etcd()
    with start_etcd(1) as etcd:
        yield etcd


@pytest.fixture
def etcd(io_loop, etcd_server):
    client = EtcdClient(etcd_server.endpoints)
    yield client
    client.close()


@pytest.fixture
def keys(request) -> tuple[str, str]:
    """A leader key and a term key of this test's own."""
    return f"/{request.node.name}/leader", f"/{request.node.name}/term"


def refused_endpoint() -> str:
    return f"http://127.0.0.1:{free_ports(1)[0]}"  # nobody listens there


@pytest.fixture
def hung_endpoint():
    """A port that accepts connections (the kernel's backlog) and never answers: a paused member."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


async def wait_gone(etcd: EtcdClient, key: str) -> float:
    """Poll until ``key`` is gone; seconds waited (bounded by EXPIRY_WAIT_S)."""
    start = time.monotonic()
    while await etcd.get(key) is not None:
        assert time.monotonic() - start < EXPIRY_WAIT_S, f"{key} still there {EXPIRY_WAIT_S} s after its lease's TTL"
        await asyncio.sleep(0.1)
    return time.monotonic() - start


def test_without_etcd_the_tests_skip_but_fail_under_ci(monkeypatch):
    monkeypatch.setattr("tests.test_etcd.etcd_binary", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install etcd-server"):
        require_etcd()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and etcd is required"):
        require_etcd()


@pytest.mark.gen_test
async def test_grant_keepalive_revoke(etcd):
    lease = await etcd.grant(5)
    assert lease > 0
    assert 0 < await etcd.keepalive(lease) <= 5
    await etcd.revoke(lease)
    with pytest.raises(LeaseGone, match=f"lease {lease:x}"):
        await etcd.keepalive(lease)
    await etcd.revoke(lease)  # already gone: not an error
    with pytest.raises(LeaseGone):
        await etcd.put("/bound-to-a-dead-lease", "x", lease=lease)


@pytest.mark.gen_test(timeout=20)
async def test_a_key_put_with_a_lease_goes_when_the_lease_expires(etcd, keys):
    key = keys[0]
    lease = await etcd.grant(1)
    await etcd.put(key, b"\x00bytes\xff", lease=lease)
    kv = await etcd.get(key)
    assert (kv.key, kv.value, kv.lease) == (key, b"\x00bytes\xff", lease)
    assert kv.create_revision == kv.mod_revision > 0
    await wait_gone(etcd, key)
    with pytest.raises(LeaseGone):
        await etcd.keepalive(lease)


@pytest.mark.gen_test
async def test_put_get_delete(etcd, keys):
    key = keys[0]
    assert await etcd.get(key) is None
    first = await etcd.put(key, "one")
    second = await etcd.put(key, "two")
    kv = await etcd.get(key)
    assert (kv.text, kv.lease, kv.create_revision, kv.mod_revision) == ("two", 0, first, second)
    assert await etcd.delete(key) is True
    assert await etcd.delete(key) is False
    assert await etcd.get(key) is None


@pytest.mark.gen_test
async def test_create_leader_succeeds_once_and_a_second_caller_gets_none_while_held(etcd, keys):
    leader_key, term_key = keys
    mine, theirs = await etcd.grant(10), await etcd.grant(10)
    won = await etcd.create_leader(leader_key, "node1", mine, term_key, known_term=0)
    assert isinstance(won, Acquired) and won.term == 1
    assert await etcd.create_leader(leader_key, "node2", theirs, term_key, known_term=0) is None
    assert await etcd.create_leader(leader_key, "node1", mine, term_key, known_term=0) is None  # not even the holder
    holder, term = await etcd.get(leader_key), await etcd.get(term_key)
    assert (holder.text, holder.lease, holder.mod_revision) == ("node1", mine, won.revision)
    assert (term.text, term.lease, term.mod_revision) == ("1", 0, won.revision)  # one transaction
    await etcd.revoke(mine)
    await etcd.revoke(theirs)


@pytest.mark.gen_test(timeout=20)
async def test_after_the_lease_expires_a_second_caller_wins_a_strictly_greater_term(etcd, keys):
    leader_key, term_key = keys
    first = await etcd.create_leader(leader_key, "node1", await etcd.grant(1), term_key, known_term=3)
    assert first.term == 4
    assert await etcd.create_leader(leader_key, "node2", await etcd.grant(10), term_key, known_term=3) is None
    await wait_gone(etcd, leader_key)  # node1 stopped renewing
    second = await etcd.create_leader(leader_key, "node2", await etcd.grant(10), term_key, known_term=3)
    assert second.term > first.term and second.term == 5
    assert (await etcd.get(leader_key)).text == "node2"
    assert (await etcd.get(term_key)).text == "5"  # the term key has no lease: it outlives every leader


@pytest.mark.gen_test
async def test_a_known_term_above_the_stored_counter_is_respected(etcd, keys):
    leader_key, term_key = keys
    lease = await etcd.grant(10)
    assert (await etcd.create_leader(leader_key, "node1", lease, term_key, known_term=41)).term == 42
    assert await etcd.release_leader(leader_key, "node1")
    # A node that knows less than etcd does still takes the next term after etcd's.
    assert (await etcd.create_leader(leader_key, "node2", lease, term_key, known_term=7)).term == 43
    await etcd.revoke(lease)


@pytest.mark.gen_test
async def test_a_term_changed_between_read_and_transaction_refuses(etcd, keys, monkeypatch):
    leader_key, term_key = keys
    await etcd.put(term_key, "6")
    real_get = etcd.get

    async def get_then_someone_takes_term_7(key, timeout=None):
        kv = await real_get(key, timeout)
        await etcd.put(term_key, "7")  # another node won term 7 and lost its key since
        return kv

    monkeypatch.setattr(etcd, "get", get_then_someone_takes_term_7)
    lease = await etcd.grant(10)
    assert await etcd.create_leader(leader_key, "node1", lease, term_key, known_term=0) is None
    monkeypatch.undo()
    assert await etcd.get(leader_key) is None
    assert (await etcd.create_leader(leader_key, "node1", lease, term_key, known_term=0)).term == 8
    await etcd.revoke(lease)


@pytest.mark.gen_test
async def test_a_leader_back_from_a_restart_keeps_its_term_unless_etcd_handed_out_a_later_one(etcd, keys):
    leader_key, term_key = keys
    lease = await etcd.grant(10)
    assert (await etcd.create_leader(leader_key, "node1", lease, term_key)).term == 1
    assert await etcd.release_leader(leader_key, "node1")
    again = await etcd.create_leader(leader_key, "node1", lease, term_key, known_term=0, keep_term=1)
    assert again.term == 1 and (await etcd.get(term_key)).text == "1"
    assert await etcd.release_leader(leader_key, "node1")
    assert (await etcd.create_leader(leader_key, "node2", lease, term_key)).term == 2
    assert await etcd.release_leader(leader_key, "node2")
    with pytest.raises(TermPassed) as passed:
        await etcd.create_leader(leader_key, "node1", lease, term_key, keep_term=1)
    assert passed.value.stored == 2 and await etcd.get(leader_key) is None
    await etcd.revoke(lease)


@pytest.mark.gen_test
async def test_a_switchover_moves_the_key_from_its_holder_in_the_next_term(etcd, keys):
    leader_key, term_key = keys
    old, new = await etcd.grant(10), await etcd.grant(10)
    assert (await etcd.create_leader(leader_key, "node1", old, term_key, known_term=4)).term == 5
    assert await etcd.create_leader(leader_key, "node2", new, term_key, holder="node3") is None  # not node3's
    moved = await etcd.create_leader(leader_key, "node2", new, term_key, known_term=2, holder="node1")
    assert moved.term == 6
    holder = await etcd.get(leader_key)
    assert (holder.text, holder.lease, (await etcd.get(term_key)).text) == ("node2", new, "6")
    await etcd.revoke(old)  # the old leader's lease no longer holds the key
    assert (await etcd.get(leader_key)).text == "node2"
    await etcd.revoke(new)


@pytest.mark.gen_test
async def test_get_prefix_reads_every_key_under_it_and_nothing_else(etcd, keys):
    base = keys[0]
    await etcd.put(base + "/a", "1")
    await etcd.put(base + "/b", "2")
    await etcd.put(base + "0", "not under it")
    found = await etcd.get_prefix(base + "/")
    assert {k: kv.text for k, kv in found.items()} == {base + "/a": "1", base + "/b": "2"}
    assert await etcd.get_prefix(base + "/nothing/") == {}


async def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.gen_test(timeout=20)
async def test_a_watch_calls_back_once_in_place_and_on_every_change_of_its_key_only(etcd, keys):
    key, other = keys
    calls = []
    watching = asyncio.ensure_future(etcd.watch(key, lambda: calls.append(1), duration_s=10))
    await until(lambda: len(calls) == 1)  # in place: the caller reads the key again
    await etcd.put(key, "a")
    await until(lambda: len(calls) == 2)
    await etcd.put(other, "not watched")
    await etcd.delete(key)  # what a lease running out does
    await until(lambda: len(calls) == 3)
    assert len(calls) == 3  # the other key's put called nothing
    watching.cancel()


@pytest.mark.gen_test(timeout=20)
async def test_a_watch_returns_when_its_duration_is_over_and_fails_on_a_dead_endpoint(io_loop, etcd_server, keys):
    client = EtcdClient([refused_endpoint()] + etcd_server.endpoints)
    try:
        with pytest.raises(EtcdError, match="watch on"):
            await client.watch(keys[0], lambda: None, duration_s=5)
        started = time.monotonic()
        await client.watch(keys[0], lambda: None, duration_s=1)  # the next endpoint: the live one
        assert 0.8 < time.monotonic() - started < 3
    finally:
        client.close()


@pytest.mark.gen_test
async def test_a_term_key_that_is_not_a_number_is_an_error_saying_what_to_do(etcd, keys):
    leader_key, term_key = keys
    await etcd.put(term_key, "seven")
    with pytest.raises(EtcdError, match="holds b'seven', not a number: put the highest term"):
        await etcd.create_leader(leader_key, "node1", await etcd.grant(10), term_key)


@pytest.mark.gen_test
async def test_release_only_deletes_our_own_key(etcd, keys):
    leader_key, term_key = keys
    lease = await etcd.grant(10)
    assert await etcd.create_leader(leader_key, "node1", lease, term_key)
    assert await etcd.release_leader(leader_key, "node2") is False
    assert (await etcd.get(leader_key)).text == "node1"
    assert await etcd.release_leader(leader_key, "node1") is True
    assert await etcd.get(leader_key) is None
    assert await etcd.release_leader(leader_key, "node1") is False  # already gone
    await etcd.revoke(lease)


@pytest.mark.gen_test
async def test_a_bogus_first_endpoint_fails_over_to_the_real_one(io_loop, etcd_server, keys, hung_endpoint):
    leader_key, term_key = keys
    real = etcd_server.endpoints[0]
    etcd = EtcdClient([refused_endpoint(), real], timeout=1.0)
    try:
        lease = await etcd.grant(10)
        assert etcd.current_endpoint == real  # remembered: the next calls go there first
        assert (await etcd.create_leader(leader_key, "node1", lease, term_key)).term == 1
        await etcd.revoke(lease)
    finally:
        etcd.close()
    etcd = EtcdClient([hung_endpoint, real], timeout=1.0)
    try:
        start = time.monotonic()
        assert (await etcd.get(term_key)).text == "1"  # the hung member gets its share of the second, not all
        assert time.monotonic() - start < 0.9 and etcd.current_endpoint == real
    finally:
        etcd.close()


@pytest.mark.gen_test
async def test_only_bogus_endpoints_raise_unavailable_within_the_timeout(io_loop, hung_endpoint, keys):
    refused = refused_endpoint()
    etcd = EtcdClient([refused, hung_endpoint], timeout=0.5)
    try:
        start = time.monotonic()
        with pytest.raises(EtcdUnavailable) as raised:
            await etcd.get(keys[0])
        assert time.monotonic() - start < 0.5 + 0.3
        message = str(raised.value)
        assert f"tried {refused}, {hung_endpoint}" in message and "within 0.5 s" in message
        assert "timed out" in message.lower() or "timeout" in message.lower()  # the last error: the hung one
        with pytest.raises(EtcdUnavailable):
            await etcd.create_leader(keys[0], "node1", 1, keys[1], timeout=0.2)
    finally:
        etcd.close()


@pytest.mark.gen_test
async def test_a_leader_transaction_sent_to_a_member_that_hangs_has_an_unknown_outcome(io_loop, hung_endpoint, keys):
    etcd = EtcdClient([hung_endpoint], timeout=0.3)
    try:
        with pytest.raises(EtcdError, match="the outcome is unknown") as raised:
            await etcd._call("/v3/kv/txn", {}, None, retry_safe=False)
        assert not isinstance(raised.value, EtcdUnavailable)
    finally:
        etcd.close()


@pytest.mark.gen_test
async def test_status_says_which_endpoints_answer(io_loop, etcd_server):
    refused = refused_endpoint()
    etcd = EtcdClient(etcd_server.endpoints + [refused], timeout=0.5)
    try:
        up, down = await etcd.status()
    finally:
        etcd.close()
    assert up.ok and up.member_id and up.leader == up.member_id and up.version.startswith("3.")
    assert (down.endpoint, down.ok) == (refused, False) and down.error


def test_endpoints_are_checked():
    assert parse_endpoints("http://a:2379/, http://b:2379") == ["http://a:2379", "http://b:2379"]
    with pytest.raises(ValueError, match="no etcd endpoints"):
        parse_endpoints(" , ")
    with pytest.raises(ValueError, match="'a:2379' is not http://host:port"):
        parse_endpoints(["a:2379"])
