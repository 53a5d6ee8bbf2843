"""JSON for the replication path: orjson where it can, the standard library where it cannot.

orjson (a Rust JSON library) encodes and decodes several times faster than ``json``, which
matters when every write is decoded and encoded a dozen times across the cluster. It refuses
a few things the standard library accepts: integers beyond 64 bits and strings holding an
unpaired surrogate. Those fall back to ``json``, so the set of documents the store accepts and
the errors it reports do not depend on which library did the work.
"""

from __future__ import annotations

import json
import re
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; this keeps a bare install working
    orjson = None


# 19 digits in a row may be an integer orjson would read as a float (e.g. 2**64): leave it to json.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def dumps(value: Any) -> bytes:
    """Compact JSON, UTF-8."""
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:
            pass
    return json.dumps(value, separators=(",", ":")).encode()


def dumps_sorted(value: Any) -> bytes:
    """Compact JSON with sorted keys: the canonical form of a log record."""
    if orjson is not None:
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            pass
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def loads_fast(raw: bytes) -> tuple[bool, Any]:
    """(True, value) when orjson decodes ``raw``; (False, None) when the caller must use its
    own ``json`` path (which then accepts it or says precisely what is wrong)."""
    if orjson is None or _LONG_DIGITS.search(raw):
        return False, None
    try:
        return True, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False, None


def loads(raw: bytes) -> Any:
    """Decode trusted JSON (a peer's answer)."""
    ok, value = loads_fast(raw)
    return value if ok else json.loads(raw)
