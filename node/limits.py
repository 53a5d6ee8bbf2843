"""Size limits, derived from ``Config`` once and shared by the handlers and replication.

    limits = Limits.from_config(config)
    limits.replicate_body_bytes     # what POST /replicate accepts
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_KEY_BYTES = 1024
# Far below Python's recursion limit, so a value that parses can also be logged, sent and served.
MAX_JSON_DEPTH = 256
# A /replicate batch nests each entry two levels deeper ({"entries": [entry, ...]}) than a write.
REPLICATE_JSON_DEPTH = MAX_JSON_DEPTH + 2
# An entry as the leader forwards it can be larger than the write that made it: seq, term, op
# and ts are added, non-ASCII characters are escaped ("é": 2 bytes in a request, 6 in an entry)
# and numbers are printed again (1e15: 4 bytes, then 18). /replicate allows this many times
# MAX_BODY_BYTES so that every write the leader accepted can be pushed.
REPLICATE_BODY_FACTOR = 6
# Catch-up pages from /log are cut at about this size (always at least one entry).
LOG_PAGE_BYTES = 4 << 20
# The HTTP server hangs up on bodies above this; below it every route answers a JSON 413 itself.
MIN_SERVER_BODY_BYTES = 64 << 20


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int  # client requests (MAX_BODY_BYTES)
    replicate_body_bytes: int  # one POST /replicate
    max_batch_bytes: int  # the entries the leader packs into one /replicate
    server_body_bytes: int  # what the HTTP server reads at all
    max_json_depth: int = MAX_JSON_DEPTH
    replicate_json_depth: int = REPLICATE_JSON_DEPTH
    log_page_bytes: int = LOG_PAGE_BYTES

    @classmethod
    def from_config(cls, config) -> Limits:
        body = config.max_body_bytes
        return cls(
            max_body_bytes=body,
            # The batch plus the {"entries":[...]} around it.
            replicate_body_bytes=REPLICATE_BODY_FACTOR * body + 4096,
            max_batch_bytes=REPLICATE_BODY_FACTOR * body,
            server_body_bytes=max((REPLICATE_BODY_FACTOR + 1) * body, MIN_SERVER_BODY_BYTES),
        )
