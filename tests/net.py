"""Loopback plumbing for tests: free ports for the clusters they start, and JSON over HTTP."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request


def free_port_block(count: int = 6) -> int:
    """A base port such that base..base+count-1 are all free on 127.0.0.1 right now.

    The search stays below Linux's ephemeral range (32768+), where outgoing connections take
    their ports, and starts at a per-process offset so parallel runs rarely probe the same block.
    """
    for base in range(20000 + os.getpid() % 500 * 20, 32700, 7):
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no block of free ports on 127.0.0.1")


def http(method: str, url: str, body=None, timeout: float = 30):
    """One JSON request; returns (status, decoded body), error statuses included."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
