"""Every bad request gets a 4xx JSON error that says what was wrong, and changes nothing."""

import dataclasses
import json

import pytest

from node.app import make_app, open_node
from node.config import load_config
from node.core.quorum import QuorumTimeout


@pytest.fixture
def node(tmp_path):
    config = load_config({"REPLICATION_SECRET": "handler-secret", "ROLE": "leader",
                          "PEERS": "leader=127.0.0.1:8000,f1=127.0.0.1:9", "DATA_DIR": str(tmp_path),
                          "MAX_BODY_BYTES": "2048", "WRITE_TIMEOUT": "50", "MIN_DELAY": "0", "MAX_DELAY": "0"})
    return open_node(config)


@pytest.fixture
def app(node):
    return make_app(node)


async def call(http_client, base_url, method, path, body=None, headers=None):
    response = await http_client.fetch(base_url + path, method=method, body=body, raise_error=False,
                                       allow_nonstandard_methods=True, headers=headers)
    assert response.headers["Content-Type"].startswith("application/json")
    return response.code, json.loads(response.body)


BAD_WRITES = [
    (b"", 400, "request body is empty"),
    (b"{", 400, "not valid JSON"),
    (b'{"key": "a", "value": 1', 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object, got array"),
    (b'"text"', 400, "must be a JSON object, got string"),
    (b"null", 400, "must be a JSON object, got null"),
    (b'{"value": 1}', 400, "'key' must be a string, got null"),
    (b'{"key": 5, "value": 1}', 400, "'key' must be a string, got number"),
    (b'{"key": "", "value": 1}', 400, "'key' must not be empty"),
    (b'{"key": "a"}', 400, "'value' is missing"),
    (b'{"key": "a", "value": 1, "ttl": 5}', 400, "unknown field(s) 'ttl'"),
    (b'{"key": "a", "value": NaN}', 400, "NaN is not valid JSON"),
    (b'{"key": "a", "value": Infinity}', 400, "Infinity is not valid JSON"),
    (b'{"key": "\\ud800", "value": 1}', 400, "unpaired surrogate"),
    (b'{"key": "' + b"k" * 1025 + b'", "value": 1}', 400, "the limit is 1024 bytes"),
    (b"\xff\xfe", 400, "not valid UTF-8"),
    (b"[" * 100000 + b"]" * 100000, 413, "exceeds MAX_BODY_BYTES=2048"),
    (b'{"key": "a", "value": "' + b"v" * 3000 + b'"}', 413, "exceeds MAX_BODY_BYTES=2048"),
]


@pytest.mark.parametrize("body, status, message", BAD_WRITES)
@pytest.mark.gen_test
async def test_bad_write_is_rejected_and_changes_nothing(http_client, base_url, node, body, status, message):
    code, answer = await call(http_client, base_url, "POST", "/write", body)
    assert (code, message in answer["error"]) == (status, True), answer
    assert node.last_seq == 0 and node.store.keys() == []


@pytest.mark.gen_test
async def test_deeply_nested_value_is_rejected(http_client, base_url, node):
    node.limits = dataclasses.replace(node.limits, max_body_bytes=1 << 20)
    body = b'{"key": "a", "value": ' + b"[" * 50000 + b"]" * 50000 + b"}"
    code, answer = await call(http_client, base_url, "POST", "/write", body)
    assert code == 400 and "nested too deeply" in answer["error"]
    assert node.last_seq == 0


@pytest.mark.parametrize(
    "method, path, status, message",
    [
        ("GET", "/nowhere", 404, "no endpoint at /nowhere"),
        ("GET", "/write", 405, "method GET is not allowed on /write; allowed: POST"),
        ("POST", "/clear", 405, "allowed: DELETE"),
        ("PUT", "/read/a", 405, "allowed: GET"),
        ("BREW", "/all", 405, "method BREW is not allowed"),
        ("GET", "/read/missing", 404, "key 'missing' not found"),
        ("DELETE", "/delete/missing", 404, "nothing to delete"),
        ("GET", "/log?after=0", 403, "missing or wrong X-Replication-Secret header"),
        ("POST", "/replicate", 403, "missing or wrong X-Replication-Secret header"),
    ],
)
@pytest.mark.gen_test
async def test_wrong_path_method_or_argument(http_client, base_url, node, method, path, status, message):
    body = b"{}" if method in ("POST", "PUT", "BREW") else None
    code, answer = await call(http_client, base_url, method, path, body)
    assert code == status and message in answer["error"], answer
    assert node.last_seq == 0


@pytest.mark.gen_test
async def test_absent_key_reads_as_not_found(http_client, base_url):
    code, answer = await call(http_client, base_url, "GET", "/read/nope")
    assert code == 404 and answer["found"] is False and answer["key"] == "nope"


@pytest.mark.gen_test
async def test_unreachable_followers_time_out_with_counts(http_client, base_url, node):
    code, answer = await call(http_client, base_url, "POST", "/write", b'{"key": "a", "value": 1}')
    assert code == 504
    assert answer["confirmations"] == 0 and answer["quorum"] == 1 and answer["success"] is False
    assert "0 of 1 required" in answer["error"] and "stays in the leader's log" in answer["error"]
    # The entry is logged and applied on the leader and keeps replicating in the background.
    assert node.last_seq == 1 and node.store.get("a") == (1, 1)
    await node.close()


@pytest.mark.parametrize(
    "method, path, status, message",
    [
        ("GET", "/log?after=x", 400, "after='x' is not an integer"),
        ("GET", "/log?after=-1", 400, "after=-1 must be >= 0"),
        ("GET", "/log?limit=0", 400, "limit=0 is out of range"),
        ("POST", "/replicate", 400,
         "a push is a JSON object with exactly the fields committed, entries, history, leader_id, term"),
        ("POST", "/admin/promise", 400, "candidate None is not another node of PEERS"),
        ("GET", "/admin/entries?upto=x", 400, "upto='x' is not an integer"),
    ],
)
@pytest.mark.gen_test
async def test_internal_endpoints_validate_after_the_secret(http_client, base_url, node, method, path, status, message):
    headers = {"X-Replication-Secret": "handler-secret"}
    code, answer = await call(http_client, base_url, method, path, b"{}" if method == "POST" else None, headers)
    assert code == status and message in answer["error"], answer


@pytest.mark.gen_test
async def test_wrong_secret_is_refused(http_client, base_url):
    code, answer = await call(http_client, base_url, "GET", "/log", headers={"X-Replication-Secret": "handler-secreT"})
    assert code == 403


@pytest.mark.gen_test
async def test_log_serves_an_entry_only_once_it_is_durable_on_the_leader(http_client, base_url, node, held_fsync):
    import asyncio

    node.log.inline_sync = False  # the held sync must not hold the event loop too
    held = held_fsync()
    write = asyncio.ensure_future(node.write("set", "a", 1))  # shipped at once (to nowhere): the sync starts
    assert await held.started()
    pull = asyncio.ensure_future(call(http_client, base_url, "GET", "/log?after=0",
                                      headers={"X-Replication-Secret": "handler-secret"}))
    done, _ = await asyncio.wait({pull}, timeout=0.3)
    assert not done  # not durable yet: no follower may get it
    held.release.set()
    code, answer = await pull
    assert code == 200 and [e["seq"] for e in answer["entries"]] == [1]
    with pytest.raises(QuorumTimeout):
        await write  # no follower answered: the write itself times out (504 over HTTP)
    await node.close()


@pytest.mark.parametrize(
    "path, message",
    [
        ("/read/a?min_seq=x", "min_seq='x' is not an integer"),
        ("/read/a?min_seq=", "min_seq='' is not an integer"),
        ("/keys?min_seq=-1", "min_seq='-1' must be >= 0"),
        ("/all?min_seq=1.5", "min_seq='1.5' is not an integer"),
        ("/all?min_seq=%20%207", "is not an integer"),
        ("/all?min_seq=99999999999999999999", "is out of range 0..9223372036854775807"),
        ("/keys?min_seq=1&min_seq=2", "min_seq is given 2 times; give it once"),
        ("/read/a?min_sq=1", "unknown query parameter(s) 'min_sq'; allowed here: min_seq"),
        ("/all?after=0", "unknown query parameter(s) 'after'"),
        ("/keys?min_seq=%FF", "min_seq is not valid UTF-8"),
    ],
)
@pytest.mark.gen_test
async def test_bad_read_query_is_a_400_naming_the_parameter(http_client, base_url, node, path, message):
    code, answer = await call(http_client, base_url, "GET", path)
    assert code == 400 and message in answer["error"], answer


@pytest.mark.gen_test
async def test_min_seq_not_reached_within_read_wait_is_a_504_saying_how_far(http_client, base_url, node):
    node.config = dataclasses.replace(node.config, read_wait_ms=30)
    code, answer = await call(http_client, base_url, "GET", "/read/a?min_seq=3")
    assert code == 504 and answer["applied_seq"] == 0 and answer["min_seq"] == 3
    assert 25 <= answer["waited_ms"] < 1000
    assert "applied 0 of 3 within READ_WAIT=30 ms" in answer["error"]
    assert len(node.store.waiters) == 0  # the timed-out reader left nothing behind


@pytest.mark.gen_test
async def test_min_seq_already_applied_answers_at_once(http_client, base_url, node):
    code, answer = await call(http_client, base_url, "GET", "/keys?min_seq=0")
    assert code == 200 and answer["applied_seq"] == 0
    code, answer = await call(http_client, base_url, "GET", "/read/a")
    assert code == 404 and answer["applied_seq"] == 0
