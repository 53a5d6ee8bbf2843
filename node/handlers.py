"""Every route of both roles as a Tornado ``RequestHandler``: parse and validate the request,
call the node, write JSON.

Every answer is JSON encoded by ``node.codec``, errors included (``{"error": "..."}`` rendered
by :meth:`BaseHandler.write_error`, with a 4xx for bad input, never a stack trace). Request
bodies are streamed and counted against the route's limit (``node.limits.Limits``), so an
oversized body gets a clean 413 without being buffered whole.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from tornado.web import RequestHandler, stream_request_body

from node import codec
from node.config import ConfigError, parse_address
from node.core.terms import StaleTerm, check_history, term_at
from node.follower import EntryConflict, ShuttingDown
from node.leader import LeaderStopping, WriteTimeout
from node.log import Entry, EntryError
from node.peers import SECRET_HEADER
from node.replica import NotLeader
from node.snapshot import SnapshotError
from node.validation import (
    ApiError,
    BoundedBody,
    body_too_large_message,
    json_type,
    parse_seq,
    query_values,
    shown,
    validate_key,
)

log = logging.getLogger(__name__)

OPENAPI_PATH = os.path.join(os.path.dirname(__file__), "openapi.json")
WRITE_FIELDS = {"key", "value"}
SNAPSHOT_CHUNK_BYTES = 256 * 1024
READ_PARAMETERS = ("min_seq",)


@stream_request_body
class BaseHandler(RequestHandler):
    """JSON in, JSON out, for every endpoint of both roles."""

    def initialize(self, node) -> None:
        self.node = node
        self.limits = node.limits

    def body_limit(self) -> int:
        return self.limits.max_body_bytes

    def json_depth(self) -> int:
        return self.limits.max_json_depth

    def prepare(self) -> None:
        limit = self.body_limit()
        self._body = BoundedBody(limit, self.request.headers.get("Content-Length", ""),
                                 body_too_large_message(limit, self.limits.max_body_bytes))

    def data_received(self, chunk: bytes) -> None:
        self._body.add(chunk)

    def json_body(self) -> Any:
        return self._body.json(self.json_depth())

    def send_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(codec.dumps(payload))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            payload = {"error": exc.message, **exc.fields}
        elif status_code == 405:
            allowed = self._allowed_methods()
            self.set_header("Allow", ", ".join(allowed))
            method, path = self.request.method, self.request.path
            payload = {"error": f"method {method} is not allowed on {path}; allowed: {', '.join(allowed)}"}
        elif status_code >= 500:
            payload = {"error": "internal error; see the node's log"}
        else:
            payload = {"error": self._reason}
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(codec.dumps(payload))

    def _allowed_methods(self) -> list[str]:
        return [m for m in ("GET", "POST", "PUT", "DELETE", "PATCH")
                if getattr(type(self), m.lower()) is not getattr(RequestHandler, m.lower())]

    def check_secret(self) -> None:
        check_secret(self.node, self.request.headers.get(SECRET_HEADER, ""))

    def ensure_leader(self) -> None:
        if self.node.role != "leader":
            raise not_leader_error(self.node)


def not_leader_error(node) -> ApiError:
    """421 Misdirected Request: this node does not lead; the body names who does."""
    fields = node.not_leader_fields()
    where = (f"send writes to the leader {fields['leader_id']} at {fields['leader_address']}" if fields["leader_address"]
             else "no leader is known right now (a promotion may be in progress); ask again shortly")
    return ApiError(421, f"this node ({node.config.node_id}) does not lead term {fields['term']} and accepts no "
                         f"writes; {where}", **fields)


def stale_term_error(node, stale: StaleTerm) -> ApiError:
    """409: a message from an older term is refused; the body gives this node's term and leader."""
    return ApiError(409, f"refused: {stale}; nothing changed", **node.not_leader_fields())


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        super().prepare()
        raise ApiError(404, f"no endpoint at {self.request.path}; see GET /openapi.json for the API")


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.send_json(self.node.health())


class StatusHandler(BaseHandler):
    def get(self) -> None:
        self.send_json(self.node.status())


class ConsistentReadHandler(BaseHandler):
    """The reads (/read, /keys, /all): with ``?min_seq=S`` the answer waits until this node has
    applied S, so a client that wrote S reads its own write on any node (DDIA 5.2); if S does
    not arrive within READ_WAIT the answer is a 504 saying how far the node got."""

    def min_seq(self) -> int | None:
        """The request's ``min_seq``, checked before anything waits (400 if it is wrong)."""
        values = query_values(self.request.query_arguments, READ_PARAMETERS)
        return parse_seq("min_seq", values["min_seq"]) if "min_seq" in values else None

    async def wait_applied(self, min_seq: int | None) -> None:
        if min_seq is None:
            return
        started = time.monotonic()
        wait_ms = self.node.config.read_wait_ms
        if not await self.node.store.wait_applied(min_seq, wait_ms / 1000):
            raise not_reached_error(self.node, min_seq, wait_ms, started)


def not_reached_error(node, min_seq: int, wait_ms: int, started: float) -> ApiError:
    """The 504 answer to a read whose ``min_seq`` this node did not apply within READ_WAIT."""
    applied = node.store.applied_seq
    return ApiError(
        504,
        f"min_seq={min_seq} not reached: this node ({node.config.node_id}) applied {applied} of {min_seq} "
        f"within READ_WAIT={wait_ms} ms; retry, or read from another node (the leader holds every "
        f"acknowledged write)",
        applied_seq=applied, min_seq=min_seq, waited_ms=round((time.monotonic() - started) * 1000, 1),
    )


class ReadHandler(ConsistentReadHandler):
    async def get(self, key: str) -> None:
        key = validate_key(key)
        await self.wait_applied(self.min_seq())
        store = self.node.store
        found = store.get(key)
        if found is None:
            raise ApiError(404, f"key {key!r} not found", key=key, found=False, applied_seq=store.applied_seq)
        value, seq = found
        self.send_json({"key": key, "value": value, "found": True, "seq": seq, "applied_seq": store.applied_seq})


class KeysHandler(ConsistentReadHandler):
    async def get(self) -> None:
        await self.wait_applied(self.min_seq())
        keys = self.node.store.keys()
        self.send_json({"keys": keys, "count": len(keys), "applied_seq": self.node.store.applied_seq})


class AllHandler(ConsistentReadHandler):
    async def get(self) -> None:
        await self.wait_applied(self.min_seq())
        data = self.node.store.snapshot()
        self.send_json({"data": data, "count": len(data), "applied_seq": self.node.store.applied_seq})


def check_secret(node, given: str) -> None:
    """Internal endpoints need the cluster's REPLICATION_SECRET."""
    if not hmac.compare_digest(given.encode(), node.config.replication_secret.encode()):
        raise ApiError(403, f"internal endpoint: missing or wrong {SECRET_HEADER} header")


def write_answer(node, op: str, key: str | None, value: Any, outcome) -> dict:
    """The 200 answer to an acknowledged write."""
    quorum = node.config.write_quorum
    total = len(node.config.followers)
    return {
        "success": True,
        "op": op,
        "key": key,
        "value": value,
        "seq": outcome.entry.seq,
        "term": outcome.entry.term,
        "confirmations": outcome.confirmations,
        "quorum": quorum,
        "message": f"Replicated to {outcome.confirmations}/{total} followers (quorum: {quorum})",
        "debug": {"replication_delays_ms": outcome.delays_ms},
    }


def timeout_error(timeout: WriteTimeout) -> ApiError:
    """The 504 answer to a write whose quorum did not arrive in time."""
    return ApiError(
        504, str(timeout), success=False, seq=timeout.seq,
        confirmations=timeout.confirmations, quorum=timeout.quorum,
        debug={"replication_delays_ms": timeout.delays_ms},
    )


def parse_write(body: Any) -> tuple[str, Any]:
    """Key and value of a POST /write body, or ApiError saying what is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {json_type(body)}")
    unknown = sorted(set(body) - WRITE_FIELDS)
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(WRITE_FIELDS))}")
    key = validate_key(body.get("key"))
    if "value" not in body:
        raise ApiError(400, "'value' is missing; send {\"key\": \"...\", \"value\": <any JSON>}")
    return key, body["value"]


class MutationHandler(BaseHandler):
    """Shared by the three operations that append to the log: set, delete and clear."""

    async def commit(self, op: str, key: str | None, value: Any = None) -> None:
        """Write and answer; counted in the leader's ``writes`` until the answer is out, so a
        graceful shutdown lets it finish."""
        with self.node.writes:
            try:
                outcome = await self.node.write(op, key, value)
            except WriteTimeout as timeout:
                raise timeout_error(timeout) from None
            except NotLeader:
                raise not_leader_error(self.node) from None
            except LeaderStopping as stopping:
                raise ApiError(503, str(stopping), success=False, seq=stopping.seq, outcome="unknown",
                               confirmations=stopping.confirmations, quorum=stopping.quorum) from None
            self.send_json(write_answer(self.node, op, key, value, outcome))


class WriteHandler(MutationHandler):
    """POST /write: numbered, logged and replicated at once, answered at quorum."""

    async def post(self) -> None:
        self.ensure_leader()
        key, value = parse_write(self.json_body())
        await self.commit("set", key, value)


class DeleteHandler(MutationHandler):
    async def delete(self, key: str) -> None:
        self.ensure_leader()
        key = validate_key(key)
        if key not in self.node.store:
            raise ApiError(404, f"key {key!r} not found; nothing to delete", key=key, found=False)
        await self.commit("delete", key)


class ClearHandler(MutationHandler):
    async def delete(self) -> None:
        self.ensure_leader()
        await self.commit("clear", None)


class ReplicateHandler(BaseHandler):
    """Internal POST /replicate (leader to follower): entries stored and confirmed once durable,
    all or nothing."""

    def body_limit(self) -> int:
        return self.limits.replicate_body_bytes

    def json_depth(self) -> int:
        return self.limits.replicate_json_depth

    async def post(self) -> None:
        self.check_secret()
        push = parse_push(self.json_body(), self.node.config)
        try:
            await self.node.replicate(push.term, push.leader_id, push.history, push.committed, push.entries)
        except StaleTerm as stale:
            raise stale_term_error(self.node, stale) from None
        except EntryConflict as exc:
            log.error("%s", exc)
            raise ApiError(409, str(exc)) from None
        except ShuttingDown as exc:
            raise ApiError(503, str(exc)) from None
        self.send_json(replicate_answer(self.node, push.entries))


def replicate_answer(node, entries: list[Entry]) -> dict:
    return {"ok": True, "count": len(entries), "node_id": node.config.node_id, "term": node.state.term,
            "applied_seq": node.store.applied_seq}


PUSH_FIELDS = {"term", "leader_id", "history", "committed", "entries"}


@dataclass
class Push:
    term: int
    leader_id: str
    history: list
    committed: int
    entries: list[Entry]


def parse_push(body: Any, config) -> Push:
    """A /replicate body: ``{"term", "leader_id", "history", "committed", "entries": [...]}``."""
    if not isinstance(body, dict) or set(body) != PUSH_FIELDS:
        got = sorted(body) if isinstance(body, dict) else json_type(body)
        raise ApiError(400, f"a push is a JSON object with exactly the fields {', '.join(sorted(PUSH_FIELDS))}; got {got}")
    term, leader_id, committed = body["term"], body["leader_id"], body["committed"]
    if type(term) is not int or term < 1:
        raise ApiError(400, f"push term must be an integer >= 1, got {term!r}")
    if type(committed) is not int or committed < 0:
        raise ApiError(400, f"push committed must be an integer >= 0, got {committed!r}")
    if not isinstance(leader_id, str) or config.address_of(leader_id) is None or leader_id == config.node_id:
        raise ApiError(400, f"push leader_id {leader_id!r} is not another node of PEERS")
    try:
        history = check_history(body["history"]) if isinstance(body["history"], list) else None
    except ValueError as exc:
        raise ApiError(400, f"push history: {exc}") from None
    if not history or history[-1][0] != term:
        raise ApiError(400, f"push history must be a non-empty list ending with the push's term {term}")
    entries = body["entries"]
    if not isinstance(entries, list) or not entries:
        raise ApiError(400, 'a push carries "entries": [entry, ...] with at least one entry')
    try:
        parsed = [Entry.from_dict(item) for item in entries]
    except EntryError as exc:
        raise ApiError(400, f"invalid entry: {exc}") from None
    wrong = [e.seq for e in parsed if term_at(history, e.seq) != e.term]
    if wrong:
        raise ApiError(400, f"entries {wrong[:10]} carry a term their history does not give their seq")
    return Push(term, leader_id, list(history), committed, parsed)


class LogHandler(BaseHandler):
    """Internal: entries after a sequence number, for followers catching up."""

    async def get(self) -> None:
        self.check_secret()
        after = self._int_arg("after", 0)
        upto = self._int_arg("upto", None)
        limit = self._int_arg("limit", 1000)
        term = self._int_arg("term", None)
        if limit < 1 or limit > 10_000:
            raise ApiError(400, f"limit={limit} is out of range 1..10000")
        try:
            await self.node.serve_log(term)
        except StaleTerm as stale:
            raise stale_term_error(self.node, stale) from None
        if self.node.role != "leader":
            raise ApiError(409, f"only the leader serves /log; this node ({self.node.config.node_id}) follows",
                           **self.node.not_leader_fields())
        node_id = self.get_query_argument("node_id", "")
        if node_id:
            self.node.note_follower_pull(node_id, after)
        state = self.node.state
        offer = self.node.snapshot_offer(after)
        if offer is not None:  # the entries after `after` were compacted away: install this first
            self.send_json({"entries": [], "snapshot": offer, "last_seq": self.node.last_seq, "more": True,
                            "term": state.term, "leader_id": state.leader_id,
                            "history": [list(item) for item in state.history],
                            "committed": self.node.role_obj.core.committed})
            return
        entries = self.node.entries_between(after, upto, limit)
        page, size = [], 0
        for entry in entries:  # a page stays below the page size, whatever the entries weigh
            item = entry.to_dict()
            size += len(codec.dumps(item))
            if page and size > self.limits.log_page_bytes:
                break
            page.append(item)
        end = self.node.last_seq if upto is None else min(upto, self.node.last_seq)
        more = bool(page) and page[-1]["seq"] < end
        if page:  # a follower must never hold an entry its leader could still lose
            await self.node.durable_through(page[-1]["seq"])
        self.send_json({"entries": page, "last_seq": self.node.last_seq, "more": more, "term": state.term,
                        "leader_id": state.leader_id, "history": [list(item) for item in state.history],
                        "committed": self.node.role_obj.core.committed})

    def _int_arg(self, name: str, default: int | None) -> int | None:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(400, f"query parameter {name}={raw!r} is not an integer") from None
        if value < 0:
            raise ApiError(400, f"query parameter {name}={value} must be >= 0")
        return value


class SnapshotHandler(BaseHandler):
    """Internal GET /snapshot: this node's newest snapshot file as it is on disk (both its
    checksums inside), streamed in bounded chunks, for a follower too far behind for the log."""

    async def get(self) -> None:
        self.check_secret()
        node_id = self.get_query_argument("node_id", "")
        if node_id and self.node.config.address_of(node_id) is None:
            raise ApiError(400, f"node_id {shown(node_id)} is not a member of the cluster")
        compactor = self.node.compactor
        path = compactor.base_path
        if path is None:
            raise ApiError(404, f"{self.node.config.node_id} has no snapshot yet (SNAPSHOT_EVERY="
                                f"{self.node.config.snapshot_every}); it still holds its whole log")
        if node_id and self.node.role == "leader":
            self.node.role_obj.note_snapshot_fetch(node_id)
        with open(path, "rb") as f:  # open: a newer snapshot may replace it meanwhile, this one stays readable
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Length", str(os.fstat(f.fileno()).st_size))
            self.set_header("X-Snapshot-Seq", str(compactor.base_seq))
            self.set_header("X-Snapshot-Term", str(compactor.base_term))
            while chunk := f.read(SNAPSHOT_CHUNK_BYTES):
                self.write(chunk)
                await self.flush()
        self.finish()


class TakeSnapshotHandler(BaseHandler):
    """Internal POST /admin/snapshot: take a snapshot now and compact the log (on any node)."""

    async def post(self) -> None:
        self.check_secret()
        if self._body.too_large or b"".join(self._body.chunks).strip():
            body = self.json_body()
            if body != {}:
                got = f"the fields {sorted(body)[:5]}" if isinstance(body, dict) else f"a JSON {json_type(body)}"
                raise ApiError(400, f"POST /admin/snapshot takes no body, or {{}}; got {got}")
        try:
            self.send_json(await self.node.compactor.take("POST /admin/snapshot"))
        except (RuntimeError, OSError, SnapshotError) as exc:
            raise ApiError(503, f"snapshot not taken: {type(exc).__name__}: {exc}; the log is left as it is "
                                f"(see the node's log and /status)") from None


MEMBERS_BODY = 'a membership change is {"add": {"node_id": id, "address": "host:port"}} or {"remove": id}'


NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
HOST = re.compile(r"[A-Za-z0-9._-]{1,253}")


def parse_member_change(body: Any) -> dict:
    """One change: an add (a new node id and its address) or a remove (a node id)."""
    if not isinstance(body, dict) or len(body) != 1 or set(body) - {"add", "remove"}:
        got = sorted(body)[:5] if isinstance(body, dict) else json_type(body)
        raise ApiError(400, f"{MEMBERS_BODY}; got {got}")
    if "remove" in body:
        check_node_id(body["remove"], "remove")
        return body
    new = body["add"]
    if not isinstance(new, dict) or set(new) != {"node_id", "address"} or not all(isinstance(v, str) for v in new.values()):
        raise ApiError(400, f"add takes exactly {{\"node_id\": string, \"address\": \"host:port\"}}; {MEMBERS_BODY}")
    check_node_id(new["node_id"], "add.node_id")
    host, _, _ = new["address"].rpartition(":")
    if len(new["address"]) > 260 or not HOST.fullmatch(host):
        raise ApiError(400, f"address {shown(new['address'])} is not a host:port address with a host of letters, "
                            f"digits, '.', '-' or '_' (e.g. follower6:8000)")
    try:
        parse_address("address", new["address"])
    except ConfigError as exc:
        raise ApiError(400, str(exc)) from None
    return body


def check_node_id(node_id: Any, field: str) -> None:
    if not isinstance(node_id, str) or not NODE_ID.fullmatch(node_id) or not any(c.isalnum() for c in node_id):
        raise ApiError(400, f"{field} must be a node id of 1..64 ASCII letters, digits, '-' or '_' (at least one "
                            f"letter or digit), got {shown(node_id) if isinstance(node_id, str) else json_type(node_id)}")


class MembersHandler(BaseHandler):
    """Internal /admin/members: GET the membership in force (any node); POST one change (the
    leader), written to the log and answered like a write once W followers hold it."""

    async def get(self) -> None:
        self.check_secret()
        self.send_json(self.node.members_status())

    async def post(self) -> None:
        self.check_secret()
        self.ensure_leader()
        change = parse_member_change(self.json_body())
        try:
            with self.node.writes:  # a graceful shutdown lets it get its answer
                answer = await self.node.change_members(change)
        except NotLeader:
            raise not_leader_error(self.node) from None
        except WriteTimeout as timeout:
            raise timeout_error(timeout) from None
        except LeaderStopping as stopping:
            raise ApiError(503, str(stopping), success=False, seq=stopping.seq, outcome="unknown",
                           confirmations=stopping.confirmations, quorum=stopping.quorum) from None
        self.send_json({**write_answer(self.node, "members", None, answer.entry.value, answer),
                        **self.node.members_status()})


class PromoteHandler(BaseHandler):
    """Internal POST /admin/promote: make this node the leader of the next term."""

    async def post(self) -> None:
        self.check_secret()
        self.send_json(await self.node.promote())


class PromiseHandler(BaseHandler):
    """Internal POST /admin/promise, a candidate asking: ``{"candidate": id, "term": t}`` (durable
    promise, then what this node holds) or ``{"candidate": id, "dry_run": true}`` (only what it
    holds; nothing changes)."""

    async def post(self) -> None:
        self.check_secret()
        body = self.json_body()
        if not isinstance(body, dict) or not set(body) <= {"candidate", "term", "dry_run"}:
            raise ApiError(400, 'a promise request is {"candidate": id, "term": t} or {"candidate": id, "dry_run": true}')
        candidate, term, dry_run = body.get("candidate"), body.get("term"), body.get("dry_run", False)
        if not isinstance(candidate, str) or self.node.config.address_of(candidate) is None \
                or candidate == self.node.config.node_id:
            raise ApiError(400, f"candidate {candidate!r} is not another node of PEERS")
        if not isinstance(dry_run, bool):  # anything else must not fall through to a real, durable promise
            raise ApiError(400, f"dry_run must be true or false, got {json_type(dry_run)}")
        if dry_run is not True and (type(term) is not int or term < 1):
            raise ApiError(400, f"term must be an integer >= 1, got {term!r}")
        self.send_json(await self.node.promise(term, candidate, dry_run is True))


class EntriesHandler(LogHandler):
    """Internal GET /admin/entries: the durable entries any node holds in (after, upto], for a
    candidate collecting what it lacks."""

    async def get(self) -> None:
        self.check_secret()
        after = self._int_arg("after", 0)
        upto = self._int_arg("upto", None)
        limit = self._int_arg("limit", 1000)
        if limit < 1 or limit > 10_000:
            raise ApiError(400, f"limit={limit} is out of range 1..10000")
        entries = self.node.held_between(after, upto, limit)
        self.send_json({"entries": [e.to_dict() for e in entries], "node_id": self.node.config.node_id})


class PauseHandler(BaseHandler):
    """Internal POST /admin/pause: no automatic failover until /admin/resume (kept in etcd, so
    every node sees it), like ``patronictl pause``; manual promotion still works."""

    paused = True

    async def post(self) -> None:
        self.check_secret()
        coordinator = self.node.coordinator
        if coordinator is None:
            raise ApiError(409, "this cluster has no coordinator (ETCD_ENDPOINTS is not set): failover is manual already")
        self.send_json(await coordinator.set_paused(self.paused))


class ResumeHandler(PauseHandler):
    """Internal POST /admin/resume: automatic failover again."""

    paused = False


class OpenApiHandler(BaseHandler):
    """The client API's OpenAPI 3 description, as kept in the repository."""

    def get(self) -> None:
        with open(OPENAPI_PATH, "rb") as f:
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(f.read())
