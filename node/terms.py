"""The term file: a node's term, promise, leader and history, durable beside its log.

A promise is worth something only if it survives a crash: a node that promised term 5 to one
candidate and forgot it after a restart could promise it again to another, and two leaders
would number entries in the same term. So the state is written to a temporary file, synced,
renamed over the old one and the directory synced, before the node answers.

File layout (format version 1), one checksummed record as in the log::

    #kvterm 1\\n
    5d3c0a11 {"history":[[1,1],[2,57]],"leader_id":"follower3","term":2,"voted_for":"follower3"}\\n
"""

from __future__ import annotations

import asyncio
import json
import os
import zlib

from node import codec
from node.core.terms import TermState, check_history
from node.durable import write_atomically

VERSION = 1
HEADER = b"#kvterm %d\n" % VERSION
TERM_FILE_NAME = "term"


class TermFileError(Exception):
    """The term file is damaged or of an unknown version: the node must not guess its promises."""


def path_in(data_dir: str) -> str:
    return os.path.join(data_dir, TERM_FILE_NAME)


def encode(state: TermState) -> bytes:
    body = codec.dumps_sorted({"term": state.term, "voted_for": state.voted_for,
                               "leader_id": state.leader_id, "history": [list(item) for item in state.history]})
    return HEADER + b"%08x %s\n" % (zlib.crc32(body), body)


def decode(path: str, data: bytes) -> TermState:
    header, _, rest = data.partition(b"\n")
    if header + b"\n" != HEADER:
        raise TermFileError(f"term file {path} starts with {header[:16]!r}, not {HEADER.strip().decode()}; "
                            f"it was written by another build or is damaged")
    crc, _, body = rest.rstrip(b"\n").partition(b" ")
    try:
        if int(crc, 16) != zlib.crc32(body):
            raise ValueError("checksum mismatch")
        data = json.loads(body)
        return TermState(term=int(data["term"]), voted_for=data["voted_for"], leader_id=data["leader_id"],
                         history=check_history(data["history"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise TermFileError(
            f"term file {path} is damaged ({exc}). The node will not guess which term it promised: restore "
            f"the file, or, if this node's data is to be rebuilt from the leader, move its DATA_DIR aside") from None


def load(data_dir: str, holds_entries: bool) -> TermState:
    """The saved state; without a file, the state of a log written before terms existed (all
    its entries are term 1) or of an empty node."""
    path = path_in(data_dir)
    try:
        with open(path, "rb") as f:
            return decode(path, f.read())
    except FileNotFoundError:
        return TermState(term=1, history=((1, 1),)) if holds_entries else TermState()


def save(data_dir: str, state: TermState) -> None:
    """Write ``state`` atomically and durably (blocking: call through :func:`save_async`)."""
    write_atomically(path_in(data_dir), encode(state))


async def save_async(data_dir: str, state: TermState) -> None:
    """:func:`save` in a worker thread: the loop goes on serving while the disk syncs."""
    await asyncio.get_running_loop().run_in_executor(None, save, data_dir, state)
