"""An async client for etcd's v3 JSON gateway: the coordinator's lock and the term counter.

Automatic failover needs one lock that at most one node holds (the leader key, bound to a
lease the holder keeps alive) and a counter that only grows (the term key), changed together
in one transaction: whoever creates the leader key also takes the next term, and that term is
its fencing token. This module speaks to etcd the way Patroni's ``patroni/dcs/etcd3.py`` does,
plain HTTP+JSON to the gateway every etcd 3.4 member serves on its client port, through a
Tornado ``AsyncHTTPClient`` of its own. The gateway carries keys and values base64-encoded and
64-bit integers as strings; callers see ``str``/``bytes`` and ``int``.

    etcd = EtcdClient(["http://127.0.0.1:2379", "http://127.0.0.1:22379"])
    lease = await etcd.grant(10)
    won = await etcd.create_leader("/kv/leader", "node1", lease, "/kv/term", known_term=4)
    if won:                 # Acquired(term=5, revision=...): lead term 5
        await etcd.keepalive(lease)   # every ttl/3 seconds; LeaseGone: the lock is lost

Endpoints: a request goes to the endpoint that answered last; one that cannot be reached is
skipped for the next, within the call's timeout (default 1 s), which is split among the
endpoints still to try so that a hung member cannot eat all of it. When none answered,
:class:`EtcdUnavailable` names them and the last error. A request that reached a member and
then timed out may have been applied: it is repeated elsewhere only when repeating is harmless
(reads, puts of the same value, deletes, keepalives); :meth:`EtcdClient.create_leader` then
raises :class:`EtcdError` saying the outcome is unknown (read the leader key to find out).

Watches: :meth:`EtcdClient.watch` keeps one streamed ``/v3/watch`` response open on the
endpoint that answered last and calls back on every change of a key, as Patroni's etcd3 module
wakes its loop; the caller reads the key again then (a watch that breaks loses nothing: the
next read sees the current value).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import socket
import time
from dataclasses import dataclass

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

DEFAULT_TIMEOUT_S = 1.0
GRPC_NOT_FOUND = 5
GRPC_UNAVAILABLE = 14  # "etcdserver: no leader", "request timed out": another member may do
# libcurl errors that mean the request never left this process: resolve or connect failed.
CURL_NOT_SENT = {5, 6, 7}
# The simple client raises connect errors as they come from the socket.
SOCKET_NOT_SENT = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL}


class EtcdError(Exception):
    """etcd refused a request, answered something unexpected, or the outcome is unknown."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered within the timeout."""


class LeaseGone(EtcdError):
    """The lease expired or was revoked: whatever was bound to it is gone."""


class TermPassed(EtcdError):
    """etcd handed out a later term than the one a leader asked to keep: it must not lead."""

    def __init__(self, stored: int) -> None:
        super().__init__(f"etcd's term counter is at {stored}")
        self.stored = stored


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int  # 0: bound to no lease

    @property
    def text(self) -> str:
        return self.value.decode(errors="replace")


@dataclass(frozen=True)
class Acquired:
    """The leader key is ours: lead ``term`` (unique to this leadership), written at ``revision``."""

    term: int
    revision: int


@dataclass(frozen=True)
class EndpointStatus:
    endpoint: str
    ok: bool
    member_id: str = ""
    leader: str = ""  # member id of the Raft leader this member knows, "" while it knows none
    raft_term: int = 0
    version: str = ""
    error: str = ""


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def parse_endpoints(endpoints: str | list[str]) -> list[str]:
    """``"http://a:2379,http://b:2379"`` or a list of the same, without trailing slashes."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    parsed = [item.strip().rstrip("/") for item in items if item.strip()]
    if not parsed:
        raise ValueError("no etcd endpoints: give at least one http://host:port")
    for item in parsed:
        if not item.startswith(("http://", "https://")):
            raise ValueError(f"etcd endpoint {item!r} is not http://host:port or https://host:port")
    return parsed


def make_http_client() -> AsyncHTTPClient:
    """A client of its own, curl when pycurl is installed (keeps connections alive, see node.peers)."""
    try:
        from tornado.curl_httpclient import CurlAsyncHTTPClient
    except ImportError:  # pragma: no cover - pycurl is a dependency; a bare install still works
        return AsyncHTTPClient(force_instance=True)
    return CurlAsyncHTTPClient(force_instance=True)


def never_sent(err: Exception) -> bool:
    """True when the request surely did not reach etcd, so sending it elsewhere cannot apply it twice."""
    if isinstance(err, HTTPClientError):
        if getattr(err, "errno", None) in CURL_NOT_SENT:
            return True
        # Timeouts before a connection existed, in curl's words and the simple client's.
        return str(err).startswith(("HTTP 599: Connection timed out", "HTTP 599: Resolving timed out",
                                   "HTTP 599: Timeout while connecting", "HTTP 599: Timeout in request queue"))
    return isinstance(err, socket.gaierror) or (isinstance(err, OSError) and err.errno in SOCKET_NOT_SENT)


def parse_kv(item: dict) -> KeyValue:
    return KeyValue(key=base64.b64decode(item["key"]).decode(errors="replace"),
                    value=base64.b64decode(item.get("value", "")),
                    create_revision=int(item.get("create_revision", 0)), mod_revision=int(item.get("mod_revision", 0)),
                    lease=int(item.get("lease", 0)))


class EtcdClient:
    """The few calls failover needs, against one etcd cluster reached through ``endpoints``."""

    def __init__(self, endpoints: str | list[str], timeout: float = DEFAULT_TIMEOUT_S,
                 http_client: AsyncHTTPClient | None = None) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self._http = http_client or make_http_client()
        self._current = 0  # index of the endpoint that answered last

    @property
    def current_endpoint(self) -> str:
        return self.endpoints[self._current]

    def close(self) -> None:
        self._http.close()

    # -- leases --------------------------------------------------------------------------

    async def grant(self, ttl_s: int, timeout: float | None = None) -> int:
        """A new lease of ``ttl_s`` seconds; its id. (A grant repeated after a lost answer leaves
        an unused lease behind, which expires on its own.)"""
        answer = await self._call("/v3/lease/grant", {"TTL": int(ttl_s)}, timeout)
        return int(answer["ID"])

    async def keepalive(self, lease_id: int, timeout: float | None = None) -> int:
        """Renew the lease; its TTL in seconds. :class:`LeaseGone` when it no longer exists."""
        answer = await self._call("/v3/lease/keepalive", {"ID": str(lease_id)}, timeout)
        ttl = int(answer.get("result", {}).get("TTL", 0))
        if ttl <= 0:
            raise LeaseGone(f"lease {lease_id:x} expired or was revoked: keys bound to it are gone")
        return ttl

    async def revoke(self, lease_id: int, timeout: float | None = None) -> None:
        """End the lease now, deleting its keys; a lease already gone is not an error."""
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease_id)}, timeout)
        except LeaseGone:
            pass

    # -- keys ----------------------------------------------------------------------------

    async def get(self, key: str, timeout: float | None = None) -> KeyValue | None:
        answer = await self._call("/v3/kv/range", {"key": b64(key)}, timeout)
        kvs = answer.get("kvs", [])
        return parse_kv(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: str, timeout: float | None = None) -> dict[str, KeyValue]:
        """Every key under ``prefix`` in one request (one consistent revision), by key."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        answer = await self._call("/v3/kv/range", {"key": b64(prefix), "range_end": b64(end)}, timeout)
        found = [parse_kv(item) for item in answer.get("kvs", [])]
        return {kv.key: kv for kv in found}

    async def put(self, key: str, value: str | bytes, lease: int | None = None, timeout: float | None = None) -> int:
        """Set ``key``; the revision written. ``lease``: the key goes when the lease does."""
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        answer = await self._call("/v3/kv/put", body, timeout)
        return int(answer["header"]["revision"])

    async def delete(self, key: str, timeout: float | None = None) -> bool:
        """Delete ``key``; True when it existed."""
        answer = await self._call("/v3/kv/deleterange", {"key": b64(key)}, timeout)
        return int(answer.get("deleted", 0)) > 0

    # -- the leader lock -----------------------------------------------------------------

    async def create_leader(self, key: str, value: str | bytes, lease: int, term_key: str, known_term: int = 0,
                            timeout: float | None = None, keep_term: int | None = None,
                            holder: str | None = None) -> Acquired | None:
        """Take the leader key and the next term in one transaction, or None when someone holds
        the key or the term changed since it was read (read both again next cycle).

        The new term is ``max(stored term, known_term) + 1``: above any term etcd handed out and
        any term this node has seen, so terms only grow and each leadership has its own.
        ``keep_term`` instead takes the key for a term this node already leads (a leader back
        from a restart): allowed only while etcd never handed out a later term, else
        :class:`TermPassed`. ``holder``: the key must name that node instead of being absent
        (a planned switchover moves it; a restarted leader rebinds its own to a new lease).
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        stored = await self.get(term_key, timeout=max(0.0, deadline - time.monotonic()))
        if keep_term is None:
            term = max(self._term_of(stored), known_term) + 1
        elif self._term_of(stored) > keep_term:
            raise TermPassed(self._term_of(stored))
        else:
            term = keep_term
        held = ({"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"} if holder is None
                else {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(holder)})
        body = {"compare": [held, self._unchanged(term_key, stored)],
                "success": [{"request_put": {"key": b64(key), "value": b64(value), "lease": str(lease)}},
                            {"request_put": {"key": b64(term_key), "value": b64(str(term))}}]}
        answer = await self._call("/v3/kv/txn", body, max(0.0, deadline - time.monotonic()), retry_safe=False)
        if not answer.get("succeeded"):
            return None
        return Acquired(term=term, revision=int(answer["header"]["revision"]))

    @staticmethod
    def _unchanged(term_key: str, stored: KeyValue | None) -> dict:
        """The compare that fails when the term counter moved since ``stored`` was read."""
        if stored is None:
            return {"key": b64(term_key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        return {"key": b64(term_key), "target": "MOD", "result": "EQUAL", "mod_revision": str(stored.mod_revision)}

    async def release_leader(self, key: str, value: str | bytes, timeout: float | None = None) -> bool:
        """Delete the leader key if it still holds ``value`` (a graceful step-down); True when
        this call deleted it, False when it was someone else's or already gone."""
        body = {"compare": [{"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)}],
                "success": [{"request_delete_range": {"key": b64(key)}}]}
        answer = await self._call("/v3/kv/txn", body, timeout)
        return bool(answer.get("succeeded"))

    @staticmethod
    def _term_of(stored: KeyValue | None) -> int:
        if stored is None:
            return 0
        try:
            return int(stored.value)
        except ValueError:
            raise EtcdError(f"term key {stored.key!r} holds {stored.value[:40]!r}, not a number: put the highest "
                            f"term any node has seen there (etcdctl put {stored.key} N)") from None

    # -- watches -------------------------------------------------------------------------

    async def watch(self, key: str, on_change, duration_s: float = 60.0) -> None:
        """Call ``on_change()`` once the watch on ``key`` is in place (so the caller reads it
        again: nothing between its last read and now is missed) and after every change of it,
        for ``duration_s`` (then it returns; call it again). :class:`EtcdError` when the stream
        cannot be opened or breaks early."""
        endpoint = self.current_endpoint
        lines = _LineBuffer()

        def chunk(data: bytes) -> None:
            for message in lines.feed(data):
                result = message.get("result", {}) if isinstance(message, dict) else {}
                if result.get("created") or result.get("events"):
                    on_change()

        body = {"create_request": {"key": b64(key)}}
        request = HTTPRequest(endpoint + "/v3/watch", method="POST", body=json.dumps(body),
                              headers={"Content-Type": "application/json"}, streaming_callback=chunk,
                              connect_timeout=self.timeout, request_timeout=duration_s)
        started = time.monotonic()
        try:
            response = await self._http.fetch(request, raise_error=False)
        except Exception as err:  # noqa: BLE001 - the stream's end: a timeout is the normal one
            if time.monotonic() - started >= duration_s * 0.9:
                return
            self._current = (self.endpoints.index(endpoint) + 1) % len(self.endpoints)
            raise EtcdError(f"watch on {endpoint}: {describe(err)}") from None
        if response.code != 200:
            self._current = (self.endpoints.index(endpoint) + 1) % len(self.endpoints)
            raise EtcdError(f"watch on {endpoint} answered {response.code}")

    # -- members -------------------------------------------------------------------------

    async def status(self, timeout: float | None = None) -> list[EndpointStatus]:
        """``/v3/maintenance/status`` of every endpoint at once: which answer, and whom they follow."""
        budget = self.timeout if timeout is None else timeout
        return list(await asyncio.gather(*(self._status_of(endpoint, budget) for endpoint in self.endpoints)))

    async def _status_of(self, endpoint: str, timeout: float) -> EndpointStatus:
        try:
            answer = await self._post(endpoint, "/v3/maintenance/status", {}, timeout, timeout)
        except EtcdError as err:
            return EndpointStatus(endpoint, ok=False, error=str(err))
        except Exception as err:
            return EndpointStatus(endpoint, ok=False, error=describe(err))
        leader = answer.get("leader", "0")
        return EndpointStatus(endpoint, ok=True, member_id=answer.get("header", {}).get("member_id", ""),
                              leader="" if leader == "0" else leader, raft_term=int(answer.get("raftTerm", 0)),
                              version=answer.get("version", ""))

    # -- transport -----------------------------------------------------------------------

    async def _call(self, path: str, body: dict, timeout: float | None, retry_safe: bool = True) -> dict:
        """POST ``body`` to the endpoint that answered last, then to the others, within ``timeout``."""
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        order = self.endpoints[self._current:] + self.endpoints[:self._current]
        tried, last = [], "no time left to try"
        for i, endpoint in enumerate(order):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            share = remaining / (len(order) - i)
            tried.append(endpoint)
            try:
                answer = await self._post(endpoint, path, body, share, share if retry_safe else remaining)
            except EtcdUnavailable as err:  # a member that is up but cannot serve: another may
                last = str(err)
                if retry_safe:
                    continue
                raise EtcdError(f"{last}; the outcome is unknown") from None
            except EtcdError:
                raise
            except Exception as err:
                last = describe(err)
                if retry_safe or never_sent(err):
                    continue
                raise EtcdError(f"etcd {endpoint}{path}: {last}; the outcome is unknown "
                                f"(it may have been applied: read the key again)") from err
            self._current = self.endpoints.index(endpoint)
            return answer
        raise EtcdUnavailable(f"no etcd endpoint answered {path} within {budget:.3g} s: tried "
                              f"{', '.join(tried) or 'none'}; last error: {last}")

    async def _post(self, endpoint: str, path: str, body: dict, connect_timeout: float, request_timeout: float) -> dict:
        request = HTTPRequest(endpoint + path, method="POST", body=json.dumps(body),
                              headers={"Content-Type": "application/json"},
                              connect_timeout=connect_timeout, request_timeout=request_timeout)
        response = await self._http.fetch(request, raise_error=False)
        try:
            answer = json.loads(response.body or b"{}")
        except ValueError:
            raise EtcdError(f"{endpoint}{path} answered {response.code} with no JSON: {response.body[:200]!r}; "
                            "is this etcd's client port?") from None
        if response.code == 200 and isinstance(answer, dict):
            return answer
        message, code = answer.get("message") or answer.get("error") or "", answer.get("code")
        text = f"etcd {endpoint}{path} answered {response.code}: {message or response.reason} (gRPC code {code})"
        if code == GRPC_NOT_FOUND and "lease not found" in message:
            raise LeaseGone(text)
        if code == GRPC_UNAVAILABLE or response.code == 503:
            raise EtcdUnavailable(text)
        raise EtcdError(text)


class _LineBuffer:
    """The gateway streams one JSON object per line; chunks split them anywhere."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list:
        self._pending += data
        *complete, self._pending = self._pending.split(b"\n")
        messages = []
        for line in complete:
            try:
                messages.append(json.loads(line))
            except ValueError:
                continue  # not a message (the gateway sends none such): skip, keep the stream
        return messages


def describe(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"
