"""Size limits shared by the HTTP layer and replication."""

MAX_KEY_BYTES = 1024
# Far below Python's recursion limit, so a value that parses can also be logged, sent and served.
MAX_JSON_DEPTH = 256
# A /replicate batch nests each entry two levels deeper ({"entries": [entry, ...]}) than a write.
REPLICATE_JSON_DEPTH = MAX_JSON_DEPTH + 2
# An entry as the leader forwards it can be larger than the write that made it: seq, op and ts
# are added, non-ASCII characters are escaped ("é": 2 bytes in a request, 6 in an entry) and
# numbers are printed again (1e15: 4 bytes, then 18). /replicate allows this many times
# MAX_BODY_BYTES so that every write the leader accepted can be pushed.
REPLICATE_BODY_FACTOR = 6
# Catch-up pages from /log are cut at about this size (always at least one entry).
LOG_PAGE_BYTES = 4 << 20
