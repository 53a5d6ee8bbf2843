"""The requests a node sends to its peers, all through Tornado's ``AsyncHTTPClient``.

The leader pushes entries to each follower (``POST /replicate``); a follower pulls what it
lacks from the leader (``GET /log``). Both talk to the same few peers all day, so the client
must keep connections alive: ``CurlAsyncHTTPClient`` (libcurl through pycurl) does, reusing
one connection per peer, while Tornado's default ``SimpleAsyncHTTPClient`` opens and closes a
connection for every request. libcurl also resolves names in its own threads, so a peer whose
name takes seconds to resolve (a stopped container) delays no request to the others. Without
pycurl the simple client still works, only slower.

    client = make_client()
    response = await client.fetch(replicate_request("follower1:8000", body, secret), raise_error=False)
"""

from __future__ import annotations

from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

SECRET_HEADER = "X-Replication-Secret"
SEND_TIMEOUT_S = 10.0  # one /replicate request, connection included
CONNECT_TIMEOUT_S = 5.0
PULL_TIMEOUT_S = 30.0  # one /log page of up to LOG_PAGE_BYTES
SNAPSHOT_TIMEOUT_S = 600.0  # a whole snapshot, streamed: as large as the state
# Peers resolve through Docker's DNS, and a recreated container may come back elsewhere.
DNS_CACHE_S = 2
# Requests out at once: at most one per follower from the leader, one pull from a follower.
MAX_CLIENTS = 64


def _short_dns_cache(curl) -> None:
    import pycurl

    curl.setopt(pycurl.DNS_CACHE_TIMEOUT, DNS_CACHE_S)


def make_client() -> AsyncHTTPClient:
    """A client of its own (not Tornado's per-loop shared one), curl when pycurl is installed."""
    try:
        from tornado.curl_httpclient import CurlAsyncHTTPClient
    except ImportError:  # pragma: no cover - pycurl is a dependency; a bare install still works
        return AsyncHTTPClient(force_instance=True, max_clients=MAX_CLIENTS)
    return CurlAsyncHTTPClient(force_instance=True, max_clients=MAX_CLIENTS,
                               defaults={"prepare_curl_callback": _short_dns_cache})


def replicate_request(address: str, body: bytes, secret: str) -> HTTPRequest:
    return HTTPRequest(f"http://{address}/replicate", method="POST", body=body,
                       headers={"Content-Type": "application/json", SECRET_HEADER: secret},
                       request_timeout=SEND_TIMEOUT_S, connect_timeout=CONNECT_TIMEOUT_S)


def log_request(leader: str, secret: str, **params) -> HTTPRequest:
    query = urlencode({name: value for name, value in params.items() if value is not None})
    return HTTPRequest(f"http://{leader}/log?{query}", headers={SECRET_HEADER: secret},
                       request_timeout=PULL_TIMEOUT_S, connect_timeout=CONNECT_TIMEOUT_S)


def health_request(address: str, timeout: float = SEND_TIMEOUT_S) -> HTTPRequest:
    return HTTPRequest(f"http://{address}/health", request_timeout=timeout,
                       connect_timeout=min(timeout, CONNECT_TIMEOUT_S))


def promise_request(address: str, body: bytes, secret: str, timeout: float) -> HTTPRequest:
    return HTTPRequest(f"http://{address}/admin/promise", method="POST", body=body,
                       headers={"Content-Type": "application/json", SECRET_HEADER: secret},
                       request_timeout=timeout, connect_timeout=min(timeout, CONNECT_TIMEOUT_S))


def entries_request(address: str, secret: str, after: int, upto: int, limit: int) -> HTTPRequest:
    query = urlencode({"after": after, "upto": upto, "limit": limit})
    return HTTPRequest(f"http://{address}/admin/entries?{query}", headers={SECRET_HEADER: secret},
                       request_timeout=PULL_TIMEOUT_S, connect_timeout=CONNECT_TIMEOUT_S)


def promote_request(address: str, secret: str, timeout: float) -> HTTPRequest:
    return HTTPRequest(f"http://{address}/admin/promote", method="POST", body=b"",
                       headers={SECRET_HEADER: secret}, request_timeout=timeout, connect_timeout=CONNECT_TIMEOUT_S)


def snapshot_request(leader: str, secret: str, node_id: str, on_chunk) -> HTTPRequest:
    """``GET /snapshot``, streamed: ``on_chunk`` gets the body piece by piece as it arrives, so a
    state of any size passes through bounded buffers."""
    query = urlencode({"node_id": node_id})
    return HTTPRequest(f"http://{leader}/snapshot?{query}", headers={SECRET_HEADER: secret},
                       streaming_callback=on_chunk, request_timeout=SNAPSHOT_TIMEOUT_S,
                       connect_timeout=CONNECT_TIMEOUT_S)
