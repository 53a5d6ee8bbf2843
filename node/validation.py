"""Validation of client input: strict JSON, keys, and the error that reports what was wrong.

Kept apart from the handlers so the rules read in one place: a request that breaks one gets a
4xx with a message naming the rule, and never reaches the node.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from tornado.web import HTTPError

from node import codec
from node.limits import MAX_JSON_DEPTH, MAX_KEY_BYTES

MAX_SEQ = 2**63 - 1  # the log's numbering stays far below; anything above is a mistake
_INTEGER = re.compile(r"-?[0-9]+")


class ApiError(HTTPError):
    """An error answer: status, a message that says what was wrong, optional extra fields."""

    def __init__(self, status: int, message: str, **fields: Any) -> None:
        super().__init__(status, log_message=None)
        self.message = message
        self.fields = fields


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text} is too large for a double")
    return value


def _check_depth(value: Any, max_depth: int) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise ApiError(400, f"request body is nested more than {max_depth} levels deep")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


def parse_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode a request body as strict JSON (no NaN/Infinity) nested at most ``max_depth``
    levels; raise ApiError(400) otherwise."""
    if not raw.strip():
        raise ApiError(400, "request body is empty; send a JSON object")
    decoded, value = codec.loads_fast(raw)  # orjson refuses NaN/Infinity and 1e999 too
    if decoded:
        _check_depth(value, max_depth)
        return value
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid UTF-8") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    _check_depth(value, max_depth)
    return value


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def validate_key(key: Any) -> str:
    if not isinstance(key, str):
        raise ApiError(400, f"'key' must be a string, got {json_type(key)}")
    if not key:
        raise ApiError(400, "'key' must not be empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ApiError(400, "'key' contains an unpaired surrogate; it must be valid Unicode") from None
    if size > MAX_KEY_BYTES:
        raise ApiError(400, f"'key' is {size} bytes long; the limit is {MAX_KEY_BYTES} bytes (UTF-8)")
    return key


class BoundedBody:
    """A request body collected up to ``limit`` bytes. Past the limit the bytes are dropped and
    only the fact is kept, so an oversized body costs no memory and gets a clean 413 once read.
    """

    __slots__ = ("limit", "message", "chunks", "size", "too_large")

    def __init__(self, limit: int, declared_length: str, too_large_message: str) -> None:
        self.limit, self.message = limit, too_large_message
        self.chunks: list[bytes] = []
        self.size = 0
        # isascii: "²".isdigit() is true but int("²") fails (Tornado answers 400 for it itself).
        self.too_large = declared_length.isascii() and declared_length.isdigit() and int(declared_length) > limit

    def add(self, chunk: bytes) -> None:
        if self.too_large:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            self.too_large, self.chunks = True, []
        else:
            self.chunks.append(chunk)

    def json(self, max_depth: int) -> Any:
        if self.too_large:
            raise ApiError(413, self.message)
        return parse_json(b"".join(self.chunks), max_depth)


def body_too_large_message(limit: int, max_body_bytes: int) -> str:
    if limit == max_body_bytes:
        return f"request body exceeds MAX_BODY_BYTES={limit} bytes"
    return f"request body exceeds {limit} bytes"


def shown(text: str, limit: int = 40) -> str:
    """A client's text for an error message, cut so a hostile one cannot bloat the answer."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def query_values(arguments: dict[str, list[bytes]], allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters of a request as text, each given at most once and all of them in
    ``allowed``; ApiError(400) otherwise, as the body's unknown fields are (a misspelt
    ``min_sq=`` silently ignored would make a read look consistent when it is not)."""
    unknown = sorted(set(arguments) - set(allowed))
    if unknown:
        names = ", ".join(shown(name) for name in unknown[:5])
        raise ApiError(400, f"unknown query parameter(s) {names}; allowed here: {', '.join(allowed) or 'none'}")
    values = {}
    for name, raw in arguments.items():
        if len(raw) != 1:
            raise ApiError(400, f"query parameter {name} is given {len(raw)} times; give it once")
        try:
            values[name] = raw[0].decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, f"query parameter {name} is not valid UTF-8") from None
    return values


def parse_seq(name: str, raw: str) -> int:
    """A sequence number given as a query parameter: a decimal integer 0..MAX_SEQ."""
    if not _INTEGER.fullmatch(raw):
        raise ApiError(400, f"query parameter {name}={shown(raw)} is not an integer; give a sequence number "
                            f"0..{MAX_SEQ}, e.g. the seq a write answered")
    if raw.startswith("-"):
        raise ApiError(400, f"query parameter {name}={shown(raw)} must be >= 0")
    digits = raw.lstrip("0")
    if len(digits) > len(str(MAX_SEQ)) or int(digits or "0") > MAX_SEQ:
        raise ApiError(400, f"query parameter {name}={shown(raw)} is out of range 0..{MAX_SEQ}")
    return int(digits or "0")
