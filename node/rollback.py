"""Rollback files: where a node puts the entries it held that its new leader's log does not have.

A deposed leader, or a follower that held entries of a deposed term, must drop them to follow
the new leader, as MongoDB moves what it rolls back into rollback files and pg_rewind rewinds
a former primary. Nothing is deleted unseen: the entries go to
``DATA_DIR/rollback/rollback-term<T>-<time>.log``, a log in the usual format, readable with
``python -m node.logtool show FILE``. They were never acknowledged: a write is acknowledged
only once ``WRITE_QUORUM`` followers hold it, and every promotion keeps what they hold.
"""

from __future__ import annotations

import os
import time

from node.log import Entry, write_log_file

ROLLBACK_DIR = "rollback"


def save_rollback(data_dir: str, term: int, entries: list[Entry]) -> str:
    """Write ``entries`` (in seq order) to a new rollback file and return its path."""
    folder = os.path.join(data_dir, ROLLBACK_DIR)
    os.makedirs(folder, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = os.path.join(folder, f"rollback-term{term}-{stamp}-{time.time_ns() % 1_000_000_000:09d}.log")
    write_log_file(path, sorted(entries, key=lambda e: e.seq))
    return path
