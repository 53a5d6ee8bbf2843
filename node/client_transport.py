"""One request of ``node.client`` and what its failure proves: sent or not.

The client may retry a write only if the write never left, so this layer tells a connection
that was refused (or a name that did not resolve, or a request that never got out of the
client's queue) from every other failure. Tornado's simple client opens a connection per
request, so a refusal at connect time means no byte of the request was sent; a timeout or a
reset once connected may come after the node received it.
"""

from __future__ import annotations

import errno
import socket

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from node import codec

# connect(2) failures: the request was never written.
_NOT_CONNECTED = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL}


class NotSent(Exception):
    """The request provably never reached the node: safe to send elsewhere or again."""


def normalize_address(address: str) -> str:
    """``host:port`` from ``host:port`` or ``http://host:port/`` (tests pass URLs)."""
    address = address.strip()
    if address.startswith("http://"):
        address = address[len("http://"):]
    return address.rstrip("/")


async def send(client: SimpleAsyncHTTPClient, address: str, method: str, path: str, body: bytes | None,
               timeout: float) -> tuple[int, dict]:
    """(status, JSON body as a dict) of one request; raises NotSent when nothing was sent, any
    other exception when the request may have arrived without an answer coming back."""
    if timeout <= 0.001:  # Tornado reads a request_timeout of 0 as "no limit"
        raise NotSent("the call's deadline passed before it was sent")
    headers = {"Content-Type": "application/json"} if body is not None else None
    request = HTTPRequest(f"http://{address}{path}", method=method, body=body, headers=headers,
                          request_timeout=timeout, allow_nonstandard_methods=True)
    try:
        response = await client.fetch(request, raise_error=False)
    except socket.gaierror as exc:
        raise NotSent(f"cannot resolve {address}: {exc}") from None
    except HTTPClientError as exc:
        if "in request queue" in str(exc):  # Tornado's "Timeout in request queue": never sent
            raise NotSent(f"{address}: {exc}") from None
        raise
    except OSError as exc:
        if exc.errno in _NOT_CONNECTED:
            raise NotSent(f"{address}: {exc.strerror or exc}") from None
        raise
    return response.code, decode(response.code, response.body)


def decode(code: int, raw: bytes | None) -> dict:
    """A node's answer as a dict; anything else (a proxy's HTML page) as an ``error``."""
    try:
        answer = codec.loads(raw or b"")
    except ValueError:
        return {"error": f"HTTP {code} with a body that is not JSON: {(raw or b'')[:100]!r}"}
    return answer if isinstance(answer, dict) else {"error": f"HTTP {code} with JSON that is not an object"}
