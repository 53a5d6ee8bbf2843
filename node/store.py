"""The visible key-value state, changed only by applying log entries in sequence order.

Both roles keep one :class:`Store`. It never invents an order of its own: the leader's
sequence numbers decide, so a replica that applied entries 1..n holds exactly the state the
leader had after entry n (consistent prefix), never a mix.

Readers that need a given seq first (``?min_seq=``, read-your-writes) wait on the store's
:class:`~node.waiters.AppliedWaiters`; :meth:`Store.apply` wakes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from node.log import Entry
from node.waiters import AppliedWaiters

# A snapshot's state: key -> [value, seq of the entry that last set it], and the seq it is at.
State = dict[str, list]


def apply_to(data: dict[str, tuple[Any, int]], entry: Entry) -> None:
    """The one definition of what an entry does to a state (the live store and a snapshot
    being built from the log both use it)."""
    if entry.op == "set":
        data[entry.key] = (entry.value, entry.seq)
    elif entry.op == "delete":
        data.pop(entry.key, None)
    elif entry.op == "clear":
        data.clear()


def build_state(base: State, entries: list[Entry]) -> State:
    """``base`` with ``entries`` applied in order: the state of a new snapshot, computed from the
    previous one and the log, in a worker thread, while the live store moves on."""
    data = {key: (item[0], item[1]) for key, item in base.items()}
    for entry in entries:
        apply_to(data, entry)
    return {key: [value, seq] for key, (value, seq) in data.items()}


class Store:
    """Key -> (value, seq of the entry that last set it), plus the last applied seq.

        store = Store()
        store.apply(Entry(seq=1, op="set", key="x", value=1, ts=0.0))
        store.get("x")   # (1, 1)
        await store.wait_applied(2, timeout=1.0)   # False: nothing applied entry 2 in time
    """

    def __init__(self) -> None:
        self._data: dict[str, tuple[Any, int]] = {}
        self.applied_seq = 0
        self.waiters = AppliedWaiters()
        # Where a reset starts from: the node's newest snapshot, (state, seq), or nothing.
        self.base_loader: Callable[[], tuple[State, int] | None] = lambda: None
        # Told of every "members" entry applied (the node changes its peers from its seq on).
        self.on_members: Callable[[Entry], None] = lambda entry: None

    def apply(self, entry: Entry) -> None:
        if entry.seq != self.applied_seq + 1:
            raise ValueError(f"entry seq {entry.seq} applied after {self.applied_seq}: sequence order broken")
        apply_to(self._data, entry)
        self.applied_seq = entry.seq
        if entry.op == "members":
            self.on_members(entry)
        self.waiters.wake(entry.seq)

    async def wait_applied(self, seq: int, timeout: float) -> bool:
        """True once this store has applied ``seq`` (at once if it has), False after ``timeout``
        seconds. Never blocks the loop: the caller's Future is resolved by ``apply``."""
        await self.waiters.wait(seq, self.applied_seq, timeout)
        return self.applied_seq >= seq

    def notify(self) -> None:
        """Wake the readers the current ``applied_seq`` satisfies. ``apply`` does this itself;
        code that sets the state another way (a rebuild from the log, a snapshot) calls it after."""
        self.waiters.wake(self.applied_seq)

    def reset(self) -> None:
        """Go back to the node's newest snapshot (or to nothing), to apply the log after it again:
        when a role is built, or after a rollback."""
        base = self.base_loader()
        if base is None:
            self._data, self.applied_seq = {}, 0
        else:
            self.restore(*base)

    def restore(self, state: State, seq: int) -> None:
        """Take a snapshot's state at ``seq`` (at start, or one installed from the leader)."""
        self._data = {key: (item[0], item[1]) for key, item in state.items()}
        self.applied_seq = seq
        self.notify()

    def export(self) -> State:
        """The state in a snapshot's form (a copy: the store may change while it is written)."""
        return {key: [value, seq] for key, (value, seq) in self._data.items()}

    def get(self, key: str) -> tuple[Any, int] | None:
        return self._data.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> list[str]:
        return sorted(self._data)

    def snapshot(self) -> dict[str, Any]:
        return {key: self._data[key][0] for key in sorted(self._data)}
