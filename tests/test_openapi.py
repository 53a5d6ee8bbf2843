"""node/openapi.json: a valid OpenAPI 3 description that matches the routes, served by every node."""

import json
import re
from pathlib import Path

import pytest
from openapi_spec_validator import validate
from tornado.web import RequestHandler

from node import handlers
from node.app import make_app, open_node, routes
from node.config import load_config

SPEC_BYTES = Path(handlers.OPENAPI_PATH).read_bytes()
SPEC = json.loads(SPEC_BYTES)
METHODS = ("get", "post", "put", "delete", "patch")
# Every status the handlers can answer with; anything else would be an undocumented answer.
KNOWN_STATUSES = {"200", "400", "403", "404", "405", "409", "413", "421", "503", "504"}


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
                       ("/admin/entries", "get"), ("/admin/pause", "post"), ("/admin/resume", "post")}
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
            media = body["content"]["application/json"]
            examples = [e["value"] for e in media.get("examples", {}).values()]
            examples += [media["example"]] if "example" in media else []
            for value in examples:
                check(media["schema"], value)
                count += 1
    assert count >= 15


@pytest.fixture(params=["leader", "follower"])
def node(request, tmp_path, io_loop):
    env = {"ROLE": request.param, "NODE_ID": request.param, "DATA_DIR": str(tmp_path), "REPLICATION_SECRET": SECRET,
           "MIN_DELAY": "0", "MAX_DELAY": "0", "READ_WAIT": "50"}
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


def promise(**body) -> bytes:
    return json.dumps(body).encode()


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
]


@pytest.mark.gen_test
async def test_answers_match_their_documented_schemas(http_client, base_url, node):
    """Both roles' answers, checked against the schema openapi.json gives for their status."""
    from openapi_schema_validator import OAS30Validator

    for method, path, template, body, on_leader, on_follower in REQUESTS:
        path, _, no_secret = path.partition("#")
        headers = {} if no_secret else {"X-Replication-Secret": SECRET}
        response = await http_client.fetch(base_url + path, method=method, body=body, headers=headers,
                                           raise_error=False, allow_nonstandard_methods=True)
        expected = on_leader if node.role == "leader" else on_follower
        assert response.code == expected, (node.role, method, path, response.body)
        schema = response_schema(method, template, response.code)
        OAS30Validator({**schema, "components": SPEC["components"]}).validate(json.loads(response.body))
