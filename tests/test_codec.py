"""The fast JSON path must accept and refuse exactly what the standard library path does."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import codec
from node.validation import ApiError, parse_json

DOCUMENTS = [
    b'{"key": "a", "value": 1}',
    b'{"key": "a", "value": 123456789012345678901234567890}',  # beyond 64 bits
    b'{"key": "a", "value": "\\ud800"}',  # an unpaired surrogate, escaped
    b'{"key": "a", "value": 1e308}',
    b'{"key": "a", "value": 1e999}',  # too large for a double
    b'{"key": "a", "value": NaN}',
    b'{"key": "a", "value": Infinity}',
    b'{"key": "a", "key": "b"}',  # duplicate keys: the last wins
    b"[1, 2,]",
    b'{"a": 1} x',
    b"\xff\xfe",
    b"[" * 300 + b"]" * 300,  # deeper than MAX_JSON_DEPTH
    b"[" * 2000 + b"]" * 2000,  # deeper than orjson's own limit
    b'"caf\xc3\xa9"',
    b'"a\x01b"',  # a raw control character inside a string
    b'"tab\there"',
    b"\xef\xbb\xbf{}",  # a byte order mark
    b" \n 12 \t",
    b"-0",
    b"1.0e-400",
]


def stdlib_verdict(raw: bytes):
    """What parse_json says with orjson out of the way."""
    saved = codec.orjson
    codec.orjson = None
    try:
        return verdict(raw)
    finally:
        codec.orjson = saved


def verdict(raw: bytes):
    try:
        return ("ok", parse_json(raw))
    except ApiError as exc:
        return ("error", exc.status_code, exc.message)


@pytest.mark.parametrize("raw", DOCUMENTS)
def test_same_verdict_with_and_without_orjson(raw):
    assert verdict(raw) == stdlib_verdict(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_encoding_round_trips_and_sorting_matches_the_standard_library(value):
    assert json.loads(codec.dumps(value)) == value
    assert json.loads(codec.dumps_sorted(value)) == value
    if isinstance(value, dict):
        assert list(json.loads(codec.dumps_sorted(value))) == sorted(value)
