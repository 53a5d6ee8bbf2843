"""node/openapi.json: a valid OpenAPI 3 description that matches the routes, served by every node."""

import json
import re
from pathlib import Path

import pytest
from openapi_spec_validator import validate
from tornado.web import RequestHandler

from node import handlers
from node import snapshot as snapshots
from node.app import make_app, open_node, routes
from node.config import load_config

SPEC_BYTES = Path(handlers.OPENAPI_PATH).read_bytes()
SPEC = json.loads(SPEC_BYTES)
METHODS = ("get", "post", "put", "delete", "patch")
# Every status the handlers can answer with; anything else would be an undocumented answer.
KNOWN_STATUSES = {"200", "400", "403", "404", "405", "409", "413", "421", "503", "504"}
# The one answer that is not JSON: a snapshot file, streamed as it is on disk.
BINARY_ANSWERS = {("/snapshot", "get", "200"): ("X-Snapshot-Seq", "X-Snapshot-Term", "Content-Length")}


def implemented_methods(handler_class) -> set[str]:
    return {m for m in METHODS if getattr(handler_class, m) is not getattr(RequestHandler, m)}


def operations():
    for path, item in SPEC["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def resolve(obj: dict) -> dict:
    while "$ref" in obj:
        target = SPEC
        for part in obj["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        obj = target
    return obj


def schema_names(schema: dict) -> set[str]:
    """Names of the component schemas a schema is or extends (through allOf)."""
    names = set()
    if "$ref" in schema:
        names.add(schema["$ref"].rsplit("/", 1)[1])
        names |= schema_names(resolve(schema))
    for part in schema.get("allOf", []):
        names |= schema_names(part)
    return names


def sample_path(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "some-key", template)


def route_for(path: str):
    """The route whose pattern matches ``path`` (Tornado anchors patterns at both ends)."""
    matches = [r for r in routes(node=None) if re.fullmatch(r[0], path)]
    assert len(matches) <= 1, (path, matches)
    return matches[0] if matches else None


def test_spec_is_valid_openapi_3():
    assert SPEC["openapi"].startswith("3.0")
    validate(SPEC)


def test_every_route_is_described_and_nothing_else():
    described = {}
    for path in SPEC["paths"]:
        route = route_for(sample_path(path))
        assert route is not None, f"{path} is in openapi.json but no route serves it"
        described[route[0]] = path
    missing = [pattern for pattern, *_ in routes(node=None) if pattern not in described]
    assert not missing, f"routes missing from openapi.json: {missing}"
    assert len(described) == len(SPEC["paths"])


@pytest.mark.parametrize("pattern, handler_class", [(r[0], r[1]) for r in routes(node=None)])
def test_route_methods_and_parameters_match_the_spec(pattern, handler_class):
    paths = [p for p in SPEC["paths"] if re.fullmatch(pattern, sample_path(p))]
    assert len(paths) == 1, f"{pattern} is described by {paths}"
    path = paths[0]
    item = SPEC["paths"][path]
    assert {m for m in METHODS if m in item} == implemented_methods(handler_class)
    # One path parameter per capturing group of the route.
    path_params = [p for p in item.get("parameters", []) if p["in"] == "path"]
    assert [p["name"] for p in path_params] == re.findall(r"\{([^}]+)\}", path)
    assert len(path_params) == re.compile(pattern).groups


def test_every_answer_is_documented_with_a_json_schema():
    seen = set()
    for path, method, operation in operations():
        assert operation.get("operationId"), (path, method)
        for status, response in operation["responses"].items():
            assert status in KNOWN_STATUSES, (path, method, status)
            seen.add(status)
            response = resolve(response)
            if (path, method, status) in BINARY_ANSWERS:
                assert list(response["content"]) == ["application/octet-stream"], (path, method, status)
                assert response["content"]["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
                assert set(response["headers"]) == set(BINARY_ANSWERS[path, method, status]), (path, method, status)
                continue
            assert list(response["content"]) == ["application/json"], (path, method, status)
            schema = response["content"]["application/json"]["schema"]
            if status.startswith(("4", "5")):
                assert "Error" in schema_names(schema), (path, method, status)
    # 405 is the answer to the methods a path does not take: listed once per path item.
    not_allowed = resolve({"$ref": "#/components/responses/MethodNotAllowed"})
    assert "Error" in schema_names(not_allowed["content"]["application/json"]["schema"])
    assert "Allow" in not_allowed["headers"]
    for path, item in SPEC["paths"].items():
        assert item["x-other-methods"] == {"status": 405, "response": "MethodNotAllowed"}, path
    seen.add("405")
    assert seen == KNOWN_STATUSES


def test_error_schema():
    error = SPEC["components"]["schemas"]["Error"]
    assert error["type"] == "object" and error["required"] == ["error"]
    assert error["properties"]["error"]["type"] == "string"


def test_writes_document_the_refusal_of_a_node_that_does_not_lead():
    for path, method in [("/write", "post"), ("/delete/{key}", "delete"), ("/clear", "delete")]:
        responses = SPEC["paths"][path][method]["responses"]
        assert "403" not in responses, path  # no secret and no role answers 403 on a write
        schema = resolve(responses["421"])["content"]["application/json"]["schema"]
        assert {"NotLeader", "TermFields"} <= schema_names(schema), path
        assert "term" in SPEC["components"]["schemas"]["MutationResult"]["required"]
    fields = SPEC["components"]["schemas"]["TermFields"]
    assert fields["required"] == ["term", "leader_id", "leader_address"]
    assert fields["properties"]["leader_id"]["nullable"] and fields["properties"]["leader_address"]["nullable"]


def test_reads_document_min_seq_and_its_504():
    for path in ("/read/{key}", "/keys", "/all"):
        operation = SPEC["paths"][path]["get"]
        assert [resolve(p)["name"] for p in operation["parameters"]] == ["min_seq"], path
        assert "ReadNotReached" in schema_names(resolve(operation["responses"]["504"])["content"]["application/json"]["schema"])
    assert "applied_seq" in SPEC["components"]["schemas"]["ReadResult"]["required"]


def test_internal_endpoints_need_the_replication_secret():
    scheme = SPEC["components"]["securitySchemes"]["replicationSecret"]
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "X-Replication-Secret"}
    secured = {(path, method) for path, method, op in operations() if op.get("security")}
    assert secured == {("/replicate", "post"), ("/log", "get"), ("/admin/promote", "post"), ("/admin/promise", "post"),
                       ("/admin/entries", "get"), ("/admin/pause", "post"), ("/admin/resume", "post"),
                       ("/snapshot", "get"), ("/admin/snapshot", "post"), ("/admin/members", "get"),
                       ("/admin/members", "post")}
    for path, method in secured:
        operation = SPEC["paths"][path][method]
        assert operation["security"] == [{"replicationSecret": []}]
        assert "403" in operation["responses"]


def test_examples_match_their_schemas():
    from openapi_schema_validator import OAS30Validator

    def check(schema, value):
        OAS30Validator({**schema, "components": SPEC["components"]}).validate(value)

    count = 0
    for _path, _method, operation in operations():
        bodies = [operation["requestBody"]] if "requestBody" in operation else []
        bodies += [resolve(r) for r in operation["responses"].values()]
        for body in bodies:
            if "application/octet-stream" in body["content"]:  # a snapshot file: it must read back whole
                found = snapshots.decode("example", body["content"]["application/octet-stream"]["example"].encode())
                assert found.seq >= 1 and found.data
                count += 1
                continue
            media = body["content"]["application/json"]
            examples = [e["value"] for e in media.get("examples", {}).values()]
            examples += [media["example"]] if "example" in media else []
            for value in examples:
                check(media["schema"], value)
                count += 1
    assert count >= 15


@pytest.fixture(params=["leader", "follower"])
def node(request, tmp_path, io_loop):
    # WRITE_TIMEOUT: the leader's one write that is not refused (a membership change, below) times out quickly.
    env = {"ROLE": request.param, "NODE_ID": request.param, "DATA_DIR": str(tmp_path), "REPLICATION_SECRET": SECRET,
           "MIN_DELAY": "0", "MAX_DELAY": "0", "READ_WAIT": "50", "WRITE_TIMEOUT": "300"}
    env["PEERS"] = ("leader=127.0.0.1:8000,other=127.0.0.1:9" if request.param == "leader"
                    else "leader=127.0.0.1:9,follower=127.0.0.1:8001")
    node = open_node(load_config(env))
    yield node
    io_loop.run_sync(node.close)


@pytest.fixture
def app(node):
    return make_app(node)


@pytest.mark.gen_test
async def test_every_node_serves_the_file(http_client, base_url, node):
    response = await http_client.fetch(base_url + "/openapi.json")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.body == SPEC_BYTES, node.role
    assert json.loads(response.body) == SPEC


def response_schema(method: str, template: str, status: int) -> dict:
    item = SPEC["paths"][template]
    if method.lower() in item:
        response = resolve(item[method.lower()]["responses"][str(status)])
    else:
        assert status == item["x-other-methods"]["status"]
        response = resolve({"$ref": "#/components/responses/" + item["x-other-methods"]["response"]})
    return response["content"]["application/json"]["schema"]


SECRET = "openapi-test-secret"


def push(term: int, leader_id: str, history: list, entries: list[dict]) -> bytes:
    return json.dumps({"term": term, "leader_id": leader_id, "history": history, "committed": 0,
                       "entries": entries}).encode()


ENTRY = {"seq": 1, "term": 1, "op": "set", "key": "k", "value": {"a": [1, None]}, "ts": 1.5}
# From the leader of term 1: the follower stores it; the leader itself refuses a push naming it (400).
PUSH = push(1, "leader", [[1, 1, "leader"]], [ENTRY])
# From "other", which the leader's PEERS has and the follower's has not: of the leader's own term.
PUSH_FROM_OTHER = push(1, "other", [[1, 1, "other"]], [ENTRY])
# Term 2 from the same leader, so that the term-1 push is stale afterwards.
PUSH_2 = push(2, "leader", [[1, 1, "leader"], [2, 2, "leader"]],
              [{"seq": 2, "term": 2, "op": "noop", "key": None, "value": None, "ts": 2.0}])
BAD_HISTORY = push(1, "leader", [[1, 1, "leader"], [1, 1, "leader"]], [ENTRY])
# Seq 3 of term 2, with everything up to it committed: the follower can snapshot it.
PUSH_3 = json.dumps({"term": 2, "leader_id": "leader", "history": [[1, 1, "leader"], [2, 2, "leader"]], "committed": 3,
                     "entries": [{"seq": 3, "term": 2, "op": "set", "key": "k", "value": 3, "ts": 3.0}]}).encode()


def promise(**body) -> bytes:
    return json.dumps(body).encode()


members = promise
# A new node at an address nothing listens on: it never confirms anything.
ADD = members(add={"node_id": "new", "address": "127.0.0.1:10"})


# (method, path, spec template, body, status on the leader, status on a follower); sent with the
# replication secret except where the path says otherwise. The leader's PEERS: leader, other; the
# follower's: leader, follower. The follower starts at term 0, the leader at term 1.
REQUESTS = [
    ("GET", "/health", "/health", None, 200, 200),
    ("GET", "/status", "/status", None, 200, 200),
    ("GET", "/keys", "/keys", None, 200, 200),
    ("GET", "/all", "/all", None, 200, 200),
    ("GET", "/read/missing", "/read/{key}", None, 404, 404),
    ("GET", "/read/" + "k" * 1025, "/read/{key}", None, 400, 400),
    ("GET", "/keys?min_seq=0", "/keys", None, 200, 200),
    ("GET", "/all?min_seq=x", "/all", None, 400, 400),
    ("GET", "/read/k?min_sq=1", "/read/{key}", None, 400, 400),
    ("GET", "/keys?min_seq=5", "/keys", None, 504, 504),  # nothing applied within READ_WAIT
    ("GET", "/openapi.json", "/openapi.json", None, 200, 200),
    ("GET", "/write", "/write", None, 405, 405),
    ("POST", "/write", "/write", b"[]", 400, 421),
    ("DELETE", "/delete/missing", "/delete/{key}", None, 404, 421),
    # The follower knows no leader yet: its only peer is unreachable, so too few answer (503).
    ("POST", "/admin/promote", "/admin/promote", None, 409, 503),
    ("GET", "/status", "/status", None, 200, 200),
    ("POST", "/replicate", "/replicate", b"{}", 400, 400),
    ("POST", "/replicate", "/replicate", BAD_HISTORY, 400, 400),
    ("POST", "/replicate", "/replicate", PUSH_FROM_OTHER, 409, 400),  # two leaders of one term: refused
    ("POST", "/replicate", "/replicate", PUSH, 400, 200),
    ("GET", "/health", "/health", None, 200, 200),  # the follower now names its leader
    ("GET", "/status", "/status", None, 200, 200),
    ("GET", "/read/k", "/read/{key}", None, 404, 200),  # after the entry above
    ("GET", "/read/k?min_seq=1", "/read/{key}", None, 504, 200),
    ("GET", "/all?min_seq=1", "/all", None, 504, 200),
    ("POST", "/write", "/write", b"[]", 400, 421),  # a leader known now: named in the refusal
    ("POST", "/replicate", "/replicate", PUSH_2, 400, 200),
    ("POST", "/replicate", "/replicate", PUSH, 400, 409),  # of term 1, older than the follower's term 2
    ("GET", "/log?after=0", "/log", None, 200, 409),
    ("GET", "/log?after=0&term=1", "/log", None, 200, 409),
    ("GET", "/log?term=0", "/log", None, 409, 409),
    ("GET", "/log?limit=0", "/log", None, 400, 400),
    ("GET", "/admin/entries?after=0", "/admin/entries", None, 200, 200),
    ("GET", "/admin/entries?after=1&upto=2&limit=1", "/admin/entries", None, 200, 200),
    ("GET", "/admin/entries?limit=0", "/admin/entries", None, 400, 400),
    ("GET", "/admin/entries?after=x", "/admin/entries", None, 400, 400),
    ("POST", "/admin/promise", "/admin/promise", b"[]", 400, 400),
    ("POST", "/admin/promise", "/admin/promise", promise(candidate="other", dry_run=True), 200, 400),
    ("POST", "/admin/promise", "/admin/promise", promise(candidate="leader", dry_run=True), 400, 200),
    ("POST", "/admin/promise", "/admin/promise", promise(candidate="other", term=1), 409, 400),
    ("POST", "/admin/promise", "/admin/promise", promise(candidate="leader", term=2), 400, 409),
    ("POST", "/admin/promise", "/admin/promise", promise(candidate="leader", term=0), 400, 400),
    ("POST", "/admin/promise", "/admin/promise", promise(candidate=["leader"], dry_run=True), 400, 400),  # was a 500
    ("POST", "/admin/promise", "/admin/promise", promise(candidate="leader", dry_run="yes", term=9), 400, 400),
    ("POST", "/replicate", "/replicate", push(1, {"id": 1}, [[1, 1, "leader"]], [ENTRY]), 400, 400),  # was a 500
    ("POST", "/replicate#no-secret", "/replicate", PUSH, 403, 403),
    ("GET", "/log#no-secret", "/log", None, 403, 403),
    ("POST", "/admin/promote#no-secret", "/admin/promote", None, 403, 403),
    ("POST", "/admin/promise#no-secret", "/admin/promise", promise(candidate="leader", dry_run=True), 403, 403),
    ("GET", "/admin/entries#no-secret", "/admin/entries", None, 403, 403),
    ("POST", "/admin/pause", "/admin/pause", b"", 409, 409),  # no coordinator here: failover is manual
    ("POST", "/admin/resume", "/admin/resume", b"", 409, 409),
    ("POST", "/admin/pause#no-secret", "/admin/pause", b"", 403, 403),
    # Snapshots. Neither node has one yet, and neither has anything committed to take one of.
    ("GET", "/snapshot", "/snapshot", None, 404, 404),
    ("GET", "/snapshot?node_id=other", "/snapshot", None, 404, 400),  # "other" is in the leader's PEERS only
    ("GET", "/snapshot?node_id=stranger", "/snapshot", None, 400, 400),
    ("GET", "/snapshot?node_id=%FF", "/snapshot", None, 400, 400),
    ("GET", "/snapshot#no-secret", "/snapshot", None, 403, 403),
    ("POST", "/snapshot", "/snapshot", b"", 405, 405),
    ("GET", "/admin/snapshot", "/admin/snapshot", None, 405, 405),
    ("POST", "/admin/snapshot#no-secret", "/admin/snapshot", b"", 403, 403),
    ("POST", "/admin/snapshot", "/admin/snapshot", b"[]", 400, 400),
    ("POST", "/admin/snapshot", "/admin/snapshot", b'{"now": true}', 400, 400),
    ("POST", "/admin/snapshot", "/admin/snapshot", b"{", 400, 400),
    ("POST", "/admin/snapshot", "/admin/snapshot", b" " * (1024 * 1024 + 1), 413, 413),  # past MAX_BODY_BYTES
    ("POST", "/admin/snapshot", "/admin/snapshot", b"", 200, 200),  # taken: false
    ("POST", "/admin/snapshot", "/admin/snapshot", b" {} ", 200, 200),
    # The follower learns that seq 3 is committed: now it has something to snapshot, and then a file to serve.
    ("POST", "/replicate", "/replicate", PUSH_3, 400, 200),
    ("POST", "/admin/snapshot", "/admin/snapshot", b"{}", 200, 200),  # taken: true on the follower
    ("GET", "/snapshot", "/snapshot", None, 404, 200),
    ("GET", "/snapshot?node_id=leader", "/snapshot", None, 404, 200),
    ("GET", "/status", "/status", None, 200, 200),
    ("POST", "/admin/snapshot", "/admin/snapshot", b"", 200, 200),  # nothing committed since: taken: false
    ("GET", "/admin/entries?after=0", "/admin/entries", None, 200, 200),
    # Membership. The leader's members: leader and other (W=1, and "other" never answers); the
    # follower's: leader and follower. A follower refuses every change, whatever the body (421).
    ("GET", "/admin/members", "/admin/members", None, 200, 200),
    ("GET", "/admin/members?x=1", "/admin/members", None, 200, 200),  # the query is ignored
    ("GET", "/admin/members#no-secret", "/admin/members", None, 403, 403),
    ("POST", "/admin/members#no-secret", "/admin/members", ADD, 403, 403),
    ("PUT", "/admin/members", "/admin/members", ADD, 405, 405),
    ("DELETE", "/admin/members", "/admin/members", None, 405, 405),
    ("POST", "/admin/members", "/admin/members", b"[]", 400, 421),
    ("POST", "/admin/members", "/admin/members", b"{}", 400, 421),
    ("POST", "/admin/members", "/admin/members", b"{", 400, 421),
    ("POST", "/admin/members", "/admin/members", b"", 400, 421),
    ("POST", "/admin/members", "/admin/members", members(add={"node_id": "new", "address": "127.0.0.1:10"},
                                                         remove="other"), 400, 421),
    ("POST", "/admin/members", "/admin/members", members(remove=7), 400, 421),
    ("POST", "/admin/members", "/admin/members", members(remove=""), 400, 421),
    ("POST", "/admin/members", "/admin/members", members(add="new"), 400, 421),
    ("POST", "/admin/members", "/admin/members", members(add={"node_id": "new"}), 400, 421),
    ("POST", "/admin/members", "/admin/members", members(add={"node_id": "new", "address": 10}), 400, 421),
    ("POST", "/admin/members", "/admin/members", members(add={"node_id": "new", "address": "127.0.0.1:10",
                                                              "learner": False}), 400, 421),
    ("POST", "/admin/members", "/admin/members", members(add={"node_id": "a b", "address": "127.0.0.1:10"}), 400, 421),
    ("POST", "/admin/members", "/admin/members", members(add={"node_id": "x" * 65, "address": "127.0.0.1:10"}), 400, 421),
    ("POST", "/admin/members", "/admin/members", members(add={"node_id": "", "address": "127.0.0.1:10"}), 400, 421),
    ("POST", "/admin/members", "/admin/members", members(add={"node_id": "new", "address": "nowhere"}), 400, 421),
    ("POST", "/admin/members", "/admin/members", members(add={"node_id": "new", "address": "127.0.0.1:0"}), 400, 421),
    ("POST", "/admin/members", "/admin/members", members(add={"node_id": "new", "address": ":10"}), 400, 421),
    ("POST", "/admin/members", "/admin/members", b" " * (1024 * 1024 + 1), 413, 421),  # past MAX_BODY_BYTES
    ("POST", "/admin/members", "/admin/members", members(add={"node_id": "other", "address": "127.0.0.1:10"}), 409, 421),
    ("POST", "/admin/members", "/admin/members", members(add={"node_id": "new", "address": "127.0.0.1:9"}), 409, 421),
    ("POST", "/admin/members", "/admin/members", members(remove="leader"), 409, 421),
    ("POST", "/admin/members", "/admin/members", members(remove="other"), 409, 421),  # would leave 0 full followers < W
    ("POST", "/admin/members", "/admin/members", members(remove="nobody"), 409, 421),
    ("GET", "/admin/members", "/admin/members", None, 200, 200),  # nothing changed: still PEERS (seq 0)
    # "other" never confirms: the change times out, but its entry stays, in force on the leader.
    ("POST", "/admin/members", "/admin/members", ADD, 504, 421),
    ("GET", "/admin/members", "/admin/members", None, 200, 200),
    ("GET", "/status", "/status", None, 200, 200),  # with the learner among the leader's followers
    ("POST", "/admin/members", "/admin/members", members(remove="new"), 409, 421),  # the previous one is not committed
    ("GET", "/admin/entries?after=0", "/admin/entries", None, 200, 200),  # the leader's holds the members entry
    ("GET", "/log?after=0", "/log", None, 200, 409),
]


@pytest.mark.gen_test
async def test_answers_match_their_documented_schemas(http_client, base_url, node):
    """Both roles' answers, checked against the schema openapi.json gives for their status."""
    from openapi_schema_validator import OAS30Validator

    seen_takes, seen_members = [], []
    for method, path, template, body, on_leader, on_follower in REQUESTS:
        path, _, no_secret = path.partition("#")
        headers = {} if no_secret else {"X-Replication-Secret": SECRET}
        response = await http_client.fetch(base_url + path, method=method, body=body, headers=headers,
                                           raise_error=False, allow_nonstandard_methods=True)
        expected = on_leader if node.role == "leader" else on_follower
        assert response.code == expected, (node.role, method, path, response.body[:300])
        if (template, method.lower(), str(response.code)) in BINARY_ANSWERS:
            check_snapshot_file(response, template)
            continue
        assert response.headers["Content-Type"].startswith("application/json"), (method, path)
        schema = response_schema(method, template, response.code)
        answer = json.loads(response.body)
        OAS30Validator({**schema, "components": SPEC["components"]}).validate(answer)
        if template == "/status":
            assert not undocumented_status_fields(answer), undocumented_status_fields(answer)
        if template == "/admin/snapshot" and response.code == 200:
            seen_takes.append(answer["taken"])
        if template == "/admin/members" and method == "GET" and response.code == 200:
            seen_members.append((answer["seq"], answer["learners"], answer["voters"]))
        if template == "/admin/members" and response.code == 409:
            assert answer["error"].startswith(("membership change refused: ", "the previous membership change")), answer
            assert ("members" in answer) == answer["error"].startswith("membership change refused"), answer
    # One snapshot taken, on the follower; every other request to /admin/snapshot had nothing to take.
    assert seen_takes == ([False] * 4 if node.role == "leader" else [False, False, True, False]), seen_takes
    # Only the change that timed out changed the leader's membership: a learner, in force from seq 1.
    if node.role == "leader":
        assert seen_members == [(0, [], ["other"])] * 3 + [(1, ["new"], ["other"])], seen_members
    else:
        assert seen_members == [(0, [], ["follower"])] * 4, seen_members


def check_snapshot_file(response, template: str) -> None:
    """A GET /snapshot answer: the file as documented, with the headers the spec lists."""
    documented = resolve(SPEC["paths"][template]["get"]["responses"]["200"])
    assert response.headers["Content-Type"] == "application/octet-stream"
    for name in documented["headers"]:
        assert re.fullmatch(r"[0-9]+", response.headers[name]), (name, response.headers.get(name))
    assert int(response.headers["Content-Length"]) == len(response.body)
    found = snapshots.decode("GET /snapshot", response.body)
    assert (found.seq, found.term) == (int(response.headers["X-Snapshot-Seq"]), int(response.headers["X-Snapshot-Term"]))


def documented_properties(name: str) -> set[str]:
    return set(SPEC["components"]["schemas"][name]["properties"])


def undocumented_status_fields(status: dict) -> list[str]:
    """Fields of a /status answer that openapi.json does not list (the schemas allow extra ones,
    so a new field would otherwise go undocumented unnoticed)."""
    schema = SPEC["components"]["schemas"]["LeaderStatus" if status["role"] == "leader" else "FollowerStatus"]
    missing = [k for k in status if k not in schema["properties"]]
    missing += [f"snapshot.{k}" for k in status["snapshot"] if k not in documented_properties("SnapshotStatus")]
    if status["snapshot"]["last"] is not None:
        missing += [f"snapshot.last.{k}" for k in status["snapshot"]["last"] if k not in documented_properties("SnapshotTaken")]
    follower_fields = schema["properties"].get("followers", {}).get("additionalProperties", {}).get("properties", {})
    for address, progress in status.get("followers", {}).items():
        missing += [f"followers.{address}.{k}" for k in progress if k not in follower_fields]
    missing += [f"members.{k}" for k in status["members"] if k not in documented_properties("Membership")]
    for member in status["members"]["members"]:
        missing += [f"members.members.{member['node_id']}.{k}" for k in member if k not in documented_properties("Member")]
    return missing


SNAPSHOT = snapshots.Snapshot(seq=5, term=1, history=((1, 1, "leader"),), data={"k": [{"a": [1, None]}, 4]})


class TestALeaderStartedFromASnapshot:
    """A leader whose log starts after a snapshot at seq 5: a pull from before it gets the
    snapshot offer, and GET /snapshot the file, both as openapi.json describes them."""

    @pytest.fixture
    def node(self, tmp_path, io_loop):
        snapshots.write(str(tmp_path), SNAPSHOT)
        env = {"ROLE": "leader", "NODE_ID": "leader", "DATA_DIR": str(tmp_path), "REPLICATION_SECRET": SECRET,
               "MIN_DELAY": "0", "MAX_DELAY": "0", "PEERS": "leader=127.0.0.1:8000,other=127.0.0.1:9"}
        node = open_node(load_config(env))
        yield node
        io_loop.run_sync(node.close)

    @pytest.mark.gen_test
    async def test_snapshot_offer_file_and_status(self, http_client, base_url, node, tmp_path):
        from openapi_schema_validator import OAS30Validator

        async def call(method, path, template, status, body=None):
            response = await http_client.fetch(base_url + path, method=method, body=body, raise_error=False,
                                               headers={"X-Replication-Secret": SECRET})
            assert response.code == status, (path, response.body[:300])
            if (template, method.lower(), str(status)) in BINARY_ANSWERS:
                check_snapshot_file(response, template)
                return response.body
            answer = json.loads(response.body)
            OAS30Validator({**response_schema(method, template, status), "components": SPEC["components"]}).validate(answer)
            return answer

        snapshot_file = str(tmp_path / snapshots.DIRECTORY / snapshots.file_name(SNAPSHOT.seq))
        with open(snapshot_file, "rb") as f:
            on_disk = f.read()
        offer = {"seq": 5, "term": 1, "bytes": len(on_disk), "first_kept_seq": 6}
        for after in (0, 4):
            page = await call("GET", f"/log?after={after}&node_id=other", "/log", 200)
            assert (page["entries"], page["snapshot"], page["more"], page["last_seq"]) == ([], offer, True, 5), page
        page = await call("GET", "/log?after=5", "/log", 200)
        assert page["entries"] == [] and "snapshot" not in page and page["more"] is False, page

        status = await call("GET", "/status", "/status", 200)
        assert not undocumented_status_fields(status), undocumented_status_fields(status)
        assert (status["first_kept_seq"], status["applied_seq"], status["snapshot"]["seq"]) == (6, 5, 5), status
        assert status["snapshot"]["path"] == snapshot_file
        assert not status["followers"]["127.0.0.1:9"]["installing_snapshot"]

        assert await call("GET", "/snapshot?node_id=other", "/snapshot", 200) == on_disk
        status = await call("GET", "/status", "/status", 200)
        assert status["followers"]["127.0.0.1:9"]["installing_snapshot"] is True  # until it pulls from the log
        await call("GET", "/log?after=5&node_id=other", "/log", 200)
        status = await call("GET", "/status", "/status", 200)
        assert status["followers"]["127.0.0.1:9"]["installing_snapshot"] is False

        # Nothing committed since seq 5 (no follower confirmed anything): nothing to take, nothing changes.
        taken = await call("POST", "/admin/snapshot", "/admin/snapshot", 200, body=b"")
        assert taken == {"taken": False, "seq": 5, "reason": "nothing committed since the snapshot at seq 5"}
        assert await call("GET", "/snapshot", "/snapshot", 200) == on_disk
        assert (await call("GET", "/read/k", "/read/{key}", 200))["value"] == {"a": [1, None]}


def test_the_snapshot_fields_are_documented():
    schemas = SPEC["components"]["schemas"]
    for name in ("LeaderStatus", "FollowerStatus"):
        assert "snapshot" in schemas[name]["required"] and schemas[name]["properties"]["snapshot"] == {
            "$ref": "#/components/schemas/SnapshotStatus"}, name
    assert "first_kept_seq" in schemas["LeaderStatus"]["required"]
    assert "installing_snapshot" in schemas["LeaderStatus"]["properties"]["followers"]["additionalProperties"]["required"]
    assert set(schemas["SnapshotStatus"]["required"]) >= {"seq", "term", "path", "every", "retain_entries", "fallback_seq",
                                                         "since", "taken", "running", "last", "last_error"}
    assert schemas["LogPage"]["properties"]["snapshot"] == {"$ref": "#/components/schemas/SnapshotOffer"}
    assert set(schemas["SnapshotOffer"]["required"]) == {"seq", "term", "bytes", "first_kept_seq"}
    taken = SPEC["paths"]["/admin/snapshot"]["post"]
    assert not taken["requestBody"]["required"]
    assert {"SnapshotTaken", "SnapshotNotTaken"} <= {s["$ref"].rsplit("/", 1)[1] for s in schemas["SnapshotResult"]["oneOf"]}
    description = SPEC["info"]["description"]
    assert "SNAPSHOT_EVERY" in description and "RETAIN_ENTRIES" in description


def test_the_membership_fields_are_documented():
    schemas = SPEC["components"]["schemas"]
    for name in ("LeaderStatus", "FollowerStatus"):
        assert "members" in schemas[name]["required"] and schemas[name]["properties"]["members"] == {
            "$ref": "#/components/schemas/Membership"}, name
    assert "learner" in schemas["LeaderStatus"]["properties"]["followers"]["additionalProperties"]["required"]
    assert set(schemas["Membership"]["required"]) == {"members", "seq", "voters", "learners", "leader_id", "committed"}
    assert set(schemas["Member"]["required"]) == {"node_id", "address", "learner"}
    assert "members" in schemas["Entry"]["properties"]["op"]["enum"]
    assert set(schemas["MembersEntryValue"]["required"]) == {"members", "change"}
    assert "members" not in schemas["MutationResult"]["properties"]["op"]["enum"]  # /write, /delete, /clear never are
    # GET on any node; POST answered like a write: 421 on a node that does not lead, 504 and 503 as for /write.
    get, post = SPEC["paths"]["/admin/members"]["get"], SPEC["paths"]["/admin/members"]["post"]
    assert set(get["responses"]) == {"200", "403"}
    assert "Membership" in schema_names(resolve(get["responses"]["200"])["content"]["application/json"]["schema"])
    assert set(post["responses"]) == {"200", "400", "403", "409", "413", "421", "503", "504"}
    for status in ("421", "503", "504"):
        assert post["responses"][status] == SPEC["paths"]["/write"]["post"]["responses"][status], status
    assert {"Membership", "MembershipResult"} <= schema_names(
        resolve(post["responses"]["200"])["content"]["application/json"]["schema"])
    assert {"Error", "MembershipRefused"} <= schema_names(
        resolve(post["responses"]["409"])["content"]["application/json"]["schema"])
    assert post["requestBody"]["required"]
    change = post["requestBody"]["content"]["application/json"]["schema"]
    assert {s["$ref"].rsplit("/", 1)[1] for s in resolve(change)["oneOf"]} == {"MemberAdd", "MemberRemove"}
    new = schemas["MemberAdd"]["properties"]["add"]
    assert new["required"] == ["node_id", "address"] and new["additionalProperties"] is False
    assert new["properties"]["node_id"]["maxLength"] == 64
    assert "members" in SPEC["info"]["description"].lower()


def validate_answer(method: str, template: str, status: int, answer) -> None:
    from openapi_schema_validator import OAS30Validator

    OAS30Validator({**response_schema(method, template, status), "components": SPEC["components"]}).validate(answer)


@pytest.mark.gen_test(timeout=60)
async def test_a_membership_change_answers_as_documented(make_cluster):
    """A change that is made (a leader and two followers, W=1): the 200 answer, GET /admin/members
    and /status on every node, as openapi.json describes them."""
    import asyncio

    from tornado.testing import bind_unused_port

    async with make_cluster(followers=2, WRITE_QUORUM="1", MAX_DELAY="5") as cluster:
        secret = {"X-Replication-Secret": cluster.settings["REPLICATION_SECRET"]}

        async def call(name: str, method: str, path: str, change=None):
            response = await cluster.client.fetch(
                f"http://{cluster.address(name)}{path}", method=method, headers=secret, raise_error=False,
                body=None if change is None else json.dumps(change), request_timeout=30)
            answer = json.loads(response.body)
            validate_answer(method, path.partition("?")[0], response.code, answer)
            return response.code, answer

        async def change_members(change):
            """One change, once the previous one (or the leader's own promotion of a learner) is committed."""
            for _ in range(200):
                status, answer = await call("leader", "POST", "/admin/members", change)
                if status != 409 or "is not committed yet" not in answer["error"]:
                    return status, answer
                await asyncio.sleep(0.05)
            raise AssertionError(f"{change}: {answer}")

        nodes = ["leader", "follower1", "follower2"]
        for name in nodes:
            status, answer = await call(name, "GET", "/admin/members")
            assert status == 200 and answer["seq"] == 0 and answer["learners"] == [], answer
        sock, port = bind_unused_port()  # bound, not listening: the new node never answers
        try:
            address = f"127.0.0.1:{port}"
            status, added = await change_members({"add": {"node_id": "follower9", "address": address}})
            assert status == 200, added
            assert (added["success"], added["op"], added["key"], added["learners"]) == (True, "members", None, ["follower9"])
            assert added["value"]["members"] == added["members"] and "follower9" in added["value"]["change"]
            assert {"node_id": "follower9", "address": address, "learner": True} in added["members"]
            await cluster.settled()
            for name in nodes:
                status, answer = await call(name, "GET", "/admin/members")
                assert status == 200 and "follower9" in [m["node_id"] for m in answer["members"]], (name, answer)
                status, answer = await call(name, "GET", "/status")
                assert status == 200 and not undocumented_status_fields(answer), undocumented_status_fields(answer)
                if name == "leader":
                    assert isinstance(answer["followers"][address]["learner"], bool), answer["followers"]
            status, removed = await change_members({"remove": "follower9"})
            assert status == 200, removed
            assert "follower9" not in [m["node_id"] for m in removed["members"]] and removed["op"] == "members"
            status, entries = await call("leader", "GET", "/admin/entries?after=0")
            assert status == 200 and {e["op"] for e in entries["entries"]} == {"members"}, entries
        finally:
            sock.close()
