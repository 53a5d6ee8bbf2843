"""Files that must be whole or absent after a crash: written to a temporary name, synced,
renamed over the old one, and the directory synced (the term file, snapshots)."""

from __future__ import annotations

import os

from node.log import fsync_dir


def write_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash at any point leaves the old file or the
    new one, never a mix (blocking: call it from a worker thread on a serving node)."""
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    fsync_dir(os.path.dirname(path) or ".")
