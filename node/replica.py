"""One node of the cluster: its log, its state, its term, and the role it plays now.

Every node can lead. A node starts in the role its term file says (its ``ROLE`` setting on a
new cluster), and changes role only here:

- it *steps down* (leader to follower) as soon as it hears of a later term: from a follower's
  refusal, a push, a pull or a promise request (fencing: a leader that was only paused or cut
  off cannot acknowledge anything once a quorum promised a later term);
- it *follows* a leader of its term or a later one; a new history first rolls back the
  entries the new leader's log does not have (``node.rollback``);
- it is *promoted* (follower to leader) by ``POST /admin/promote``: promises from enough
  followers, the entries they hold fetched, a term-start entry written (``promote``).

The roles themselves are ``node.leader.Leader`` and ``node.follower.Follower``; the rules are
pure functions in ``node.core.terms``. The handlers talk only to this object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import Any

from node import codec, peers, terms
from node import snapshot as snapshots
from node.compaction import Compactor, SnapshotRefused
from node.config import Config
from node.core.compaction import needs_snapshot
from node.core.membership import Membership, MembershipError, change_allowed, learner_ready, promote_learner
from node.core.membership import add as add_member
from node.core.membership import remove as remove_member
from node.core.terms import (
    Holding,
    PromiseRefused,
    StaleTerm,
    TermState,
    check_history,
    last_leader,
    plan_promotion,
    promise_quorum,
    restamp,
    term_at,
    to_roll_back,
)
from node.follower import Follower
from node.leader import Leader
from node.limits import Limits
from node.log import Entry, LogFile, fsync_dir
from node.rollback import save_rollback
from node.snapshot import Snapshot
from node.store import Store
from node.tasks import InFlight, TaskGroup
from node.validation import ApiError

log = logging.getLogger(__name__)

PROMISE_TIMEOUT_S = 3.0
# A learner within this many entries of the leader's last one becomes a full follower: a write
# that waits for it then waits for little more than its own send.
LEARNER_MAX_LAG = 100
FETCH_PAGE = 1000


class SameTermLeader(StaleTerm):
    """A push from another node claiming to lead this leader's own term: refused like a stale
    one (409), since one term has one leader; it cannot happen unless terms were reused."""

    def __init__(self, term: int, leader_id: str):
        Exception.__init__(self, f"{leader_id} claims to lead term {term}, which this node leads")
        self.seen, self.current, self.leader_id = term, term, leader_id


class NotLeader(Exception):
    """A write reached a node that does not lead: 421, naming the leader if known."""


class Replica:
    def __init__(self, config: Config, limits: Limits, log_file: LogFile, entries: list[Entry],
                 snapshot: Snapshot | None = None) -> None:
        """``snapshot``: the newest valid one found at start; the log's entries apply after it."""
        self.config, self.limits, self.log = config, limits, log_file
        self.compactor = Compactor(self, snapshot)
        self.store = Store()
        self.store.base_loader = self.compactor.load_base
        self.writes = InFlight()
        self.state = terms.load(config.data_dir, holds_entries=bool(entries) or snapshot is not None)
        if self.state.term == 0 and config.is_leader and not entries:  # a new cluster's first leader
            self.state = TermState().lead(((1, 1, config.node_id),))
        elif self.state.term == 1 and self.state.leader_id is None and config.is_leader:
            self.state = TermState().lead(((1, 1, config.node_id),))  # a log from before terms
        self.known_committed = 0
        self._transition = asyncio.Lock()
        self.background = TaskGroup("terms")
        self.coordinator = None  # node.failover.Coordinator, when ETCD_ENDPOINTS is set
        self.members, self.members_seq = self._base_members()
        self.previous_members = self.members  # in force before the newest change (until it is committed)
        self.store.on_members = self._members_entry
        self._adopt_members()
        self._changing_members = False
        self._counting_pending = False  # a change not committed yet: check_learners widens the count once it is
        self.role_obj: Leader | Follower = self._make_role(entries)
        self._members_to_role()
        self._promoting = False
        self._started = False
        if isinstance(self.role_obj, Follower) and self.state.history:
            self._roll_back_to(self.state.history, self.state.term)  # if a crash interrupted one

    # --- membership ------------------------------------------------------------------------

    def _base_members(self) -> tuple[Membership, int]:
        """The membership of the snapshot the node starts from, or the one PEERS gives."""
        if self.compactor.base_members is not None:
            return Membership.from_json(self.compactor.base_members), self.compactor.base_seq
        return Membership.of(self.config.peers), 0

    def _members_entry(self, entry: Entry) -> None:
        """A "members" entry was applied: the membership it carries is in force from its seq on
        (on the leader from when it is appended, as in raft; on a follower once applied)."""
        if entry.seq <= self.members_seq:
            return
        self.previous_members = self.members
        self.members, self.members_seq = Membership.from_json(entry.value["members"]), entry.seq
        self._adopt_members()
        self._members_to_role()
        self._counting_pending = True
        log.info("membership from seq %d: %s", entry.seq, entry.value.get("change") or self.members.to_json())

    def _recompute_members(self, entries: list[Entry]) -> None:
        """After a rollback: the membership of the base snapshot and of the entries still held."""
        self.members, self.members_seq = self._base_members()
        for entry in entries:
            if entry.op == "members" and entry.seq <= self.store.applied_seq:
                self.members, self.members_seq = Membership.from_json(entry.value["members"]), entry.seq
        self._adopt_members()
        self._members_to_role()

    def _adopt_members(self) -> None:
        """Every node's peers are the members; a node that was removed keeps itself in its list."""
        peers = self.members.peers
        if self.config.node_id not in dict(peers):
            peers += ((self.config.node_id, self.config.address),)
        if peers != self.config.peers:
            self.config = dataclasses.replace(self.config, peers=peers)

    def _members_to_role(self) -> None:
        role = getattr(self, "role_obj", None)
        if role is None:
            return
        role.config = self.compactor.config = self.config
        if isinstance(role, Leader):
            counted = self.counted_voters()
            not_counted = {address for node_id, address in self.config.others() if node_id not in counted}
            role.core.set_followers(list(self.config.followers), not_counted)
            now = time.monotonic()
            role.last_heard = {a: role.last_heard.get(a, now) for a in self.config.followers}

    def counted_voters(self) -> set[str]:
        """Whose confirmations count towards W on this leader: the voters of the newest
        membership, and while it is not committed, only those that were voters before it too.
        A promotion that knows only the previous membership then still finds every
        acknowledged write among its promises."""
        me = self.config.node_id
        voters = set(self.members.voters(me))
        if self._members_pending():
            voters &= set(self.previous_members.voters(me))
        return voters

    def _members_pending(self) -> bool:
        leader = self.role_obj if isinstance(getattr(self, "role_obj", None), Leader) else None
        return leader is not None and self.members_seq > leader.core.committed

    def voters(self, leader_id: str | None) -> list[str]:
        """The nodes a promotion needs promises from and W counts: the full members but the leader."""
        return list(self.members.voters(leader_id))

    def electorate(self, deposed: str | None, answers) -> list[str]:
        """The voters a promotion asks for promises: of every membership this node and the
        answering nodes hold (a change may have reached some of them only). A superset of the
        voters any acknowledged write was counted by, so N - W + 1 of them include a holder."""
        found = [self.members] + [Membership.from_json(a["members"]) for a in answers
                                  if isinstance(a, dict) and a.get("members")]
        union: list[str] = []
        for membership in found:
            union += [n for n in membership.voters(deposed) if n not in union]
        return union

    def members_status(self) -> dict:
        """The membership in force; ``committed``: whether its entry is (known) committed, which
        the next change waits for."""
        committed = self.role_obj.core.committed if isinstance(getattr(self, "role_obj", None), Leader) \
            else self.known_committed
        return {"members": self.members.to_json(), "seq": self.members_seq, "voters": self.voters(self.state.leader_id),
                "learners": list(self.members.learners()), "leader_id": self.state.leader_id,
                "committed": self.members_seq <= committed}

    async def change_members(self, change: dict) -> dict:
        """``{"add": {"node_id", "address"}}`` or ``{"remove": node_id}`` on the leader: the new
        membership is written as a log entry and answered like a write (once W hold it)."""
        if not isinstance(self.role_obj, Leader):
            raise NotLeader()
        refused = change_allowed(self.members_seq, self.role_obj.core.committed)
        if refused:
            raise ApiError(409, refused)
        try:
            if "add" in change:
                new = add_member(self.members, change["add"]["node_id"], change["add"]["address"])
                what = f"add {change['add']['node_id']} at {change['add']['address']} as a learner"
            else:
                new = remove_member(self.members, change["remove"], self.config.node_id, self.config.write_quorum)
                what = f"remove {change['remove']}"
        except MembershipError as exc:
            raise ApiError(409, f"membership change refused: {exc}", members=self.members.to_json()) from None
        return await self._write_members(new, what)

    async def _write_members(self, new: Membership, what: str):
        self._changing_members = True
        try:
            return await self.role_obj.write("members", None, {"members": new.to_json(), "change": what})
        finally:
            self._changing_members = False

    def check_learners(self) -> None:
        """On the leader, after a follower answered: a learner close enough to the last entry
        becomes a full follower (one change at a time, like any other)."""
        leader = self.role_obj
        if not isinstance(leader, Leader):
            return
        if self._counting_pending and not self._members_pending():  # the newest change is committed now
            self._counting_pending = False
            self._members_to_role()
        if self._changing_members or not self.members.learners() or \
                change_allowed(self.members_seq, leader.core.committed):
            return
        for node_id in self.members.learners():
            progress = leader.core.progress.get(self.config.address_of(node_id))
            # It must hold the entry that added it: proof that it is up and following, not only near.
            if progress is not None and progress.match >= self.members_seq and \
                    learner_ready(progress.match, leader.last_seq, LEARNER_MAX_LAG):
                self.background.spawn(self._write_members(promote_learner(self.members, node_id),
                                                          f"promote {node_id}: caught up to within {LEARNER_MAX_LAG}"))
                return

    # --- roles ----------------------------------------------------------------------------

    def _make_role(self, entries: list[Entry]):
        if self.state.leader_id == self.config.node_id:
            # The log keeps what follows the older snapshot (the fallback); memory needs only what
            # lagging followers may still ask for, as after any compaction.
            base = self.compactor.base_seq
            keep_from = max(1, base + 1 - self.config.retain_entries) if base else 1
            kept = sorted((e for e in entries if e.seq >= keep_from), key=lambda e: e.seq)
            return Leader(self.config, self.limits, self.log, kept, host=self)
        return Follower(self.config, self.limits, self.log, entries, host=self)

    @property
    def role(self) -> str:
        return self.role_obj.role

    @property
    def leader_address(self) -> str | None:
        return self.config.address_of(self.state.leader_id)

    async def check_terms_first(self, timeout: float = 1.0) -> None:
        """A node that would lead asks its peers their term before it serves: a deposed leader
        restarting from its term file steps down at once instead of taking writes it could
        never get acknowledged (its followers would refuse them)."""
        if self.role != "leader":
            return
        client = peers.make_client()
        try:
            answers = await asyncio.gather(*(client.fetch(peers.health_request(address, timeout), raise_error=False)
                                             for _, address in self.config.others()), return_exceptions=True)
        finally:
            client.close()
        later = [codec.loads(a.body) for a in answers if not isinstance(a, Exception) and a.code == 200]
        later = [h for h in later if isinstance(h.get("term"), int) and h["term"] > self.state.term]
        if later:
            newest = max(later, key=lambda h: h["term"])
            await self.heard_of_term_async(newest["term"], newest.get("leader_id"))

    def start(self) -> None:
        terms.save(self.config.data_dir, self.state)  # the first leader's term 1 is durable before it serves
        self._started = True
        self.role_obj.start()
        if self.coordinator is not None:
            self.coordinator.start()

    def _held_entries(self) -> list[Entry]:
        if isinstance(self.role_obj, Leader):
            return list(self.role_obj.core.entries)
        return self.role_obj.core.entries_in_order()

    async def _become_follower(self, reason: str | None = None) -> None:
        leader = self.role_obj
        if not isinstance(leader, Leader):
            return
        reason = reason or (f"term {self.state.term} began"
                            + (f", led by {self.state.leader_id}" if self.state.leader_id else ""))
        leader.step_down(reason)
        log.warning("stepped down: %s; this node follows from now on", reason)
        self.role_obj = Follower(self.config, self.limits, self.log, list(leader.core.entries), host=self)
        self._members_to_role()
        if self._started:
            self.role_obj.start()

    # --- terms --------------------------------------------------------------------------

    async def _save(self, state: TermState) -> None:
        await terms.save_async(self.config.data_dir, state)
        self.state = state

    def heard_of_term(self, term: int, leader_id: str | None) -> None:
        """A peer answered with a later term (the leader's sends call this): act on it soon."""
        if term > self.state.term:
            self.background.spawn(self.heard_of_term_async(term, leader_id))

    async def heard_of_term_async(self, term: int, leader_id: str | None) -> None:
        async with self._transition:
            if term <= self.state.term:
                return
            await self._save(TermState(term, None, leader_id if isinstance(leader_id, str) else None,
                                       self.state.history))
            await self._become_follower()
            if isinstance(self.role_obj, Follower):
                self.role_obj.restart_catch_up()

    async def heard_from_leader(self, term: int, leader_id: str, history: Any, committed: int) -> None:
        """A push or pull answer of the leader of ``term``: follow it (after rolling back what its
        log does not have), unless this node already does. Raises StaleTerm for an older term."""
        self.state.check(term)
        self.known_committed = max(self.known_committed, committed)
        if self._follows(term, leader_id, history):
            return
        history = check_history(history)
        async with self._transition:
            self.state.check(term)
            if self._follows(term, leader_id, history):
                return
            if term == self.state.term and self.role == "leader":
                raise SameTermLeader(term, leader_id)
            # The new state is durable before anything is rolled back: a crash in between leaves a
            # node that rolls back at its next start (see __init__), never one that forgot its term.
            await self._save(self.state.follow(term, leader_id, history))
            await self._become_follower()
            self._roll_back_to(history, term)
            log.info("following %s (term %d)", leader_id, term)
            self.role_obj.restart_catch_up()

    def _follows(self, term: int, leader_id: str, history: Any) -> bool:
        """Whether this node already follows this leader with this history (the usual case:
        checked on every push, so without building anything)."""
        state = self.state
        return (term == state.term and leader_id == state.leader_id and self.role == "follower"
                and len(history) == len(state.history)
                and all(tuple(a) == tuple(b) for a, b in zip(history, state.history)))

    def _roll_back_to(self, history, term: int) -> None:
        """Move the entries the leader's log lacks to a rollback file and rewrite the log."""
        follower: Follower = self.role_obj
        seqs = to_roll_back(follower.core.held_terms(), history)
        if not seqs:
            return
        removed = follower.core.roll_back(seqs)
        path = save_rollback(self.config.data_dir, term, removed)
        self.log = follower.log = LogFile.rewrite(self.log, self.config.data_dir, follower.core.entries_in_order())
        if any(e.op == "members" for e in removed):
            self._recompute_members(follower.core.entries_in_order())
        acknowledged = [e.seq for e in removed if e.seq <= self.known_committed]
        if acknowledged:
            log.error("rolled back entries %s at or below seq %d, which the write quorum held: an acknowledged "
                      "write was lost; please report this", acknowledged[:20], self.known_committed)
        log.warning("rolled back %d entries (seq %d..%d) the term %d leader does not have; they are in %s",
                    len(removed), removed[0].seq, removed[-1].seq, term, path)

    async def demote(self, reason: str) -> None:
        """Stop leading without a new term (the coordinator's lease ran out): no leader is known
        until the next one pushes, and a restart finds this node a follower."""
        async with self._transition:
            if self.role != "leader":
                return
            await self._save(TermState(self.state.term, self.state.voted_for, None, self.state.history))
            await self._become_follower(reason)

    async def discover_leader(self, client) -> None:
        """Ask every peer's /health who leads; take the answer of the latest term."""
        answers = await asyncio.gather(*(client.fetch(peers.health_request(address), raise_error=False)
                                         for _, address in self.config.others()), return_exceptions=True)
        best = None
        for answer in answers:
            if isinstance(answer, Exception) or answer.code != 200:
                continue
            health = codec.loads(answer.body)
            if health.get("role") == "leader" and (best is None or health["term"] > best["term"]):
                best = health
        if best is not None and best["term"] >= self.state.term:
            async with self._transition:
                if best["term"] >= self.state.term and self.state.leader_id is None:
                    self.state = TermState(best["term"], self.state.voted_for if best["term"] == self.state.term else None,
                                           best["node_id"], self.state.history)

    # --- the handlers' API ----------------------------------------------------------------

    async def write(self, op: str, key: str | None, value: Any = None):
        if not isinstance(self.role_obj, Leader):
            raise NotLeader()
        return await self.role_obj.write(op, key, value)

    async def replicate(self, term: int, leader_id: str, history: Any, committed: int, entries: list[Entry]):
        await self.heard_from_leader(term, leader_id, history, committed)
        if not isinstance(self.role_obj, Follower):
            raise StaleTerm(term, self.state.term, self.state.leader_id)
        await self.role_obj.accept(entries)

    async def serve_log(self, term: int | None) -> None:
        """Term rules of a pull: refuse one from an older term; step down for a later one."""
        if term is None:
            return
        if term > self.state.term:
            await self.heard_of_term_async(term, None)
        self.state.check(term)

    @property
    def last_seq(self) -> int:
        return self.role_obj.last_seq if isinstance(self.role_obj, Leader) else max(self.role_obj.core.held, default=0)

    def entries_between(self, after: int, upto: int | None, limit: int) -> list[Entry]:
        return self.role_obj.entries_between(after, upto, limit)

    def held_between(self, after: int, upto: int | None, limit: int) -> list[Entry]:
        """Any node's durable entries in (after, upto], for a candidate collecting them."""
        held = [e for e in self._held_entries() if e.seq > after and (upto is None or e.seq <= upto)]
        return held[:limit]

    def note_follower_pull(self, node_id: str, after: int) -> bool:
        return self.role_obj.note_follower_pull(node_id, after)

    def snapshot_offer(self, after: int) -> dict | None:
        """What a pull after ``after`` gets instead of entries when the leader no longer keeps
        them: the snapshot to install (None: the log serves it)."""
        leader = self.role_obj
        if not isinstance(leader, Leader) or not needs_snapshot(after + 1, leader.core.first_seq):
            return None
        path = self.compactor.base_path
        return {"seq": self.compactor.base_seq, "term": self.compactor.base_term,
                "bytes": os.path.getsize(path) if path else 0, "first_kept_seq": leader.core.first_seq}

    async def install_snapshot(self, path: str) -> int:
        """Check the snapshot fetched to ``path`` and make it this follower's state, atomically:
        the file is verified (both checksums) and renamed into place before anything in memory
        changes, then the log keeps only what follows it. Its seq."""
        found = await asyncio.get_running_loop().run_in_executor(None, _verified, path)
        async with self._transition:
            follower = self.role_obj
            if not isinstance(follower, Follower):
                raise ApiError(409, "this node leads now: it installs no snapshot")
            if found.seq <= self.store.applied_seq:
                return self.store.applied_seq
            if term_at(self.state.history, found.seq) != found.term:
                raise SnapshotRefused(f"the snapshot at seq {found.seq} is of term {found.term}, but the leader's "
                                      f"history gives that seq term {term_at(self.state.history, found.seq)}")
            final = os.path.join(os.path.dirname(path), snapshots.file_name(found.seq))
            os.replace(path, final)
            fsync_dir(os.path.dirname(final))
            self.store.restore(found.data, found.seq)
            follower.core.installed(found.seq)
            self.compactor.installed(found, final)
            if found.members is not None:
                self.members, self.members_seq = Membership.from_json(found.members), found.seq
                self._adopt_members()
                self._members_to_role()
            kept = [e for e in follower.core.stored_entries() if e.seq > found.seq]
            await self.log.compact(self.log.mark(), kept)
            return found.seq

    def durable_through(self, seq: int):
        return self.role_obj.durable_through(seq)

    def accept(self, entries: list[Entry]):
        return self.role_obj.accept(entries)

    def health(self) -> dict:
        return {"status": "ok", "role": self.role, "node_id": self.config.node_id, "term": self.state.term,
                "leader_id": self.state.leader_id, "leader_address": self.leader_address}

    def status(self) -> dict:
        status = {**self.role_obj.status(), "term": self.state.term, "leader_id": self.state.leader_id,
                  "leader_address": self.leader_address, "voted_for": self.state.voted_for,
                  "history": [list(item) for item in self.state.history], "snapshot": self.compactor.status(),
                  "members": self.members_status()}
        if self.coordinator is not None:
            status["failover"] = self.coordinator.status()
        return status

    def not_leader_fields(self) -> dict:
        return {"leader_id": self.state.leader_id, "leader_address": self.leader_address, "term": self.state.term}

    # --- promotion: the promiser's side ---------------------------------------------------

    def holding(self) -> dict:
        """What this node holds, for a candidate: its history, contiguous prefix and what lies
        beyond a gap (durable entries only)."""
        if isinstance(self.role_obj, Leader):
            applied, beyond = self.role_obj.last_seq, []
        else:
            applied, beyond = self.store.applied_seq, sorted(self.role_obj.core.beyond_applied())
        return {"node_id": self.config.node_id, "role": self.role, "term": self.state.term,
                "leader_id": self.state.leader_id, "priority": self.config.priority,
                "etcd_reachable": self.coordinator.reachable if self.coordinator is not None else None,
                "history": [list(item) for item in self.state.history], "applied_seq": applied, "beyond": beyond,
                "members": self.members.to_json(), "members_seq": self.members_seq}

    async def promise(self, term: int | None, candidate: str, dry_run: bool) -> dict:
        """Promise ``term`` to ``candidate`` (durably, before answering), or, with ``dry_run``,
        only say what this node holds and changes nothing."""
        if dry_run:
            if isinstance(self.role_obj, Leader):
                await self.role_obj.log.sync()
            return self.holding()
        async with self._transition:
            try:
                promised = self.state.promise(term, candidate)
            except PromiseRefused as exc:
                raise ApiError(409, f"{self.config.node_id} does not promise term {term} to {candidate}: {exc}",
                               **self.not_leader_fields()) from None
            await self._save(promised)
            await self._become_follower()
            await self.role_obj.log.sync()
            log.info("promised term %d to %s", term, candidate)
            return self.holding()

    # --- promotion: the candidate's side --------------------------------------------------

    async def promote(self, term: int | None = None) -> dict:
        """Make this node the leader of ``term`` (the coordinator's, from etcd), or of the next
        term after every one the peers know (a manual promotion without a coordinator)."""
        if self.coordinator is not None and term is None:
            return await self.coordinator.promote_by_hand()
        if self.role == "leader":
            raise ApiError(409, f"{self.config.node_id} already leads term {self.state.term}", **self.not_leader_fields())
        if self.config.node_id in self.members.learners():
            raise ApiError(409, f"{self.config.node_id} is a learner (still catching up after joining): it cannot be "
                                f"promoted until the leader makes it a full follower")
        if self._promoting:
            raise ApiError(409, f"a promotion of {self.config.node_id} is already in progress")
        self._promoting = True
        started = time.monotonic()
        try:
            return await Promotion(self).run(started, term)
        finally:
            self._promoting = False

    async def become_leader(self, state: TermState, entries: list[Entry], rolled_back: list[Entry]) -> None:
        follower: Follower = self.role_obj
        await follower.stop()
        if rolled_back:
            path = save_rollback(self.config.data_dir, state.term, rolled_back)
            log.warning("rolled back %d entries no promiser held as the newest log has them; they are in %s",
                        len(rolled_back), path)
        self.log = LogFile.rewrite(self.log, self.config.data_dir, entries)
        await self._save(state)
        self.role_obj = leader = Leader(self.config, self.limits, self.log, entries, host=self)
        self._recompute_members(entries)
        leader.start()
        # Numbered and logged before this returns, so before any client write; pushed to every
        # follower like a write, which tells them the new term and history.
        _, _, quorum = leader.start_write("noop", None, {"term_start": state.term, "leader_id": self.config.node_id})
        quorum.add_done_callback(_term_start_done)

    # --- shutdown -------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        await self.role_obj.drain(timeout)

    async def close(self) -> None:
        if self.coordinator is not None:
            await self.coordinator.close()
        await self.background.cancel_all()
        await self.role_obj.close()
        self.log.close()


class Promotion:
    """One run of ``POST /admin/promote`` on the candidate (see the README's "Failover")."""

    def __init__(self, node: Replica) -> None:
        self.node = node
        self.config = node.config
        self.client = peers.make_client()

    async def run(self, started: float, term: int | None = None) -> dict:
        try:
            return await self._run(started, term)
        finally:
            self.client.close()

    async def _ask(self, address: str, body: dict) -> dict | Exception:
        request = peers.promise_request(address, codec.dumps(body), self.config.replication_secret, PROMISE_TIMEOUT_S)
        try:
            response = await self.client.fetch(request, raise_error=False)
        except Exception as exc:  # noqa: BLE001 - unreachable counts as no answer
            return exc
        if response.code != 200:
            try:
                return ConnectionRefusedError(codec.loads(response.body).get("error"))
            except ValueError:
                return ConnectionRefusedError(f"HTTP {response.code}")
        return codec.loads(response.body)

    async def _ask_all(self, body: dict, not_waiting_for: str | None = None) -> dict[str, dict | Exception]:
        """Every other node's answer. ``not_waiting_for`` (the leader being replaced) is asked
        too, but not waited for: it does not count towards any quorum, and a paused one would
        hold every round up for the whole timeout."""
        others = self.config.others()
        asked = {node_id: asyncio.ensure_future(self._ask(address, body)) for node_id, address in others}
        await asyncio.gather(*(task for node_id, task in asked.items() if node_id != not_waiting_for))
        answers: dict[str, dict | Exception] = {}
        for node_id, task in asked.items():
            if not task.done():
                task.cancel()
            answers[node_id] = task.result() if task.done() and not task.cancelled() else \
                TimeoutError(f"{node_id} was not waited for: it led the term being replaced")
        return answers

    def _electorate(self, answers: dict[str, dict | Exception]) -> tuple[str | None, list[str]]:
        """The deposed leader (of the newest history known) and the followers of its configuration."""
        histories = [self.node.state.history] + [check_history(a["history"]) for a in answers.values()
                                                 if isinstance(a, dict)]
        newest = max(histories, key=lambda h: h[-1][0] if h else 0)
        deposed = last_leader(newest)
        return deposed, self.node.electorate(deposed, answers.values())

    def _refuse(self, stage: str, granted: list[str], needed: int, electorate: list[str],
                answers: dict[str, Any]) -> ApiError:
        missing = {n: str(a) for n, a in answers.items() if n in electorate and isinstance(a, Exception)}
        return ApiError(
            503, f"promotion of {self.config.node_id} refused: {len(granted)} of the {len(electorate)} followers "
                 f"{stage} (itself included), {needed} are needed (N - W + 1 with W={self.config.write_quorum}, and "
                 f"a majority). Bring more followers back, then try again",
            answered=len(granted), needed=needed, granted=granted, unreachable=missing, stage=stage)

    async def probe(self) -> dict[str, dict | Exception]:
        """Step 1, the dry run: what every other node holds (or why it did not answer); nothing
        changes anywhere. The coordinator's healthiest check asks the same."""
        return await self._ask_all({"candidate": self.config.node_id, "dry_run": True},
                                   last_leader(self.node.state.history))

    async def _run(self, started: float, given_term: int | None) -> dict:
        node, me = self.node, self.config.node_id
        probes = await self.probe()
        deposed, electorate = self._electorate(probes)
        needed = promise_quorum(len(electorate), self.config.write_quorum)
        reachable = [n for n in electorate if n == me or isinstance(probes.get(n), dict)]
        if len(reachable) < needed:
            raise self._refuse("answered", reachable, needed, electorate, probes)
        known = max([node.state.term] + [a["term"] for a in probes.values() if isinstance(a, dict)])
        if given_term is not None and given_term <= known:
            raise ApiError(409, f"promotion to term {given_term} refused: a node already knows term {known}")
        term = given_term or known + 1
        async with node._transition:
            await node._save(node.state.promise(term, me))
        promises = await self._ask_all({"candidate": me, "term": term}, deposed)
        granted = [n for n in electorate if n == me or isinstance(promises.get(n), dict)]
        if len(granted) < needed:
            raise self._refuse("promised", granted, needed, electorate, promises)
        holdings = [_holding(a) for a in promises.values() if isinstance(a, dict)]
        mine = Holding(me, node.state.history, node.store.applied_seq, node.role_obj.core.beyond_applied())
        plan = plan_promotion(term, mine, holdings)
        fetched = await self._fetch(plan, {n: a for n, a in promises.items() if isinstance(a, dict)})
        entries, rolled_back = self._new_log(plan, fetched)
        state = TermState().lead(plan.history)
        await node.become_leader(state, entries, rolled_back)
        took = time.monotonic() - started
        log.warning("promoted to leader of term %d in %.2f s: %d promises, %d entries fetched, %d written again in "
                    "the new term, %d no-ops for seqs nobody held; the term starts at seq %d", term, took,
                    len(granted), len(plan.fetch), len(plan.restamped), len(plan.holes), plan.term_start_seq)
        return {"promoted": True, "node_id": me, "term": term, "deposed": deposed, "promises": granted,
                "needed": needed, "last_seq": plan.term_start_seq, "term_start_seq": plan.term_start_seq,
                "fetched": len(plan.fetch), "restamped": len(plan.restamped), "holes": list(plan.holes),
                "rolled_back": len(rolled_back), "took_ms": round(took * 1000, 1)}

    async def _fetch(self, plan, answers: dict[str, dict]) -> dict[int, Entry]:
        """The entries the plan takes from promisers, checked against the newest history."""
        by_node: dict[str, list[int]] = {}
        for seq, node_id in plan.fetch.items():
            by_node.setdefault(node_id, []).append(seq)
        fetched: dict[int, Entry] = {}
        for node_id, seqs in by_node.items():
            address = self.config.address_of(node_id)
            history = check_history(answers[node_id]["history"])
            wanted = set(seqs)
            after, upto = min(seqs) - 1, max(seqs)
            while after < upto:
                request = peers.entries_request(address, self.config.replication_secret, after, upto, FETCH_PAGE)
                try:
                    response = await self.client.fetch(request)
                    page = [Entry.from_dict(item) for item in codec.loads(response.body)["entries"]]
                except Exception as exc:  # noqa: BLE001 - the promiser went away mid-promotion
                    raise ApiError(503, f"promotion aborted: fetching seq {after + 1}..{upto} from {node_id} failed "
                                        f"({type(exc).__name__}: {exc}); the promises stand, so the old leader "
                                        f"cannot acknowledge writes: try the promotion again") from None
                if not page:
                    break
                for entry in page:
                    if entry.seq in wanted and entry.term == term_at(history, entry.seq):
                        fetched[entry.seq] = entry
                after = page[-1].seq
            missing = wanted - fetched.keys()
            if missing:
                raise ApiError(503, f"promotion aborted: {node_id} no longer holds seq {sorted(missing)[:10]}; "
                                    f"try again")
        return fetched

    def _new_log(self, plan, fetched: dict[int, Entry]) -> tuple[list[Entry], list[Entry]]:
        """The candidate's log as leader, and what of its own it drops."""
        own = {e.seq: e for e in self.node.role_obj.core.entries_in_order()}
        newest = plan.history
        entries = []
        for seq in range(self.node.compactor.base_seq + 1, plan.keep_through + 1):  # the snapshot holds the rest
            entry = fetched.get(seq) or own[seq]
            entries.append(entry)
        for seq in plan.restamped:
            source = fetched.get(seq) or (own.get(seq) if seq not in plan.holes else None)
            entries.append(restamp(source, plan.term) if source is not None else
                           Entry(seq, "noop", None, {"reason": "no promiser held this seq"}, time.time(), plan.term))
        kept = {(e.seq, e.op, e.key, codec.dumps(e.value)) for e in entries}
        rolled_back = [e for seq, e in own.items() if term_at(newest, seq) != e.term
                       and (seq, e.op, e.key, codec.dumps(e.value)) not in kept]
        return entries, rolled_back


def _verified(path: str) -> Snapshot:
    """Read ``path`` back whole (a damaged or cut transfer raises SnapshotError) and sync it."""
    found = snapshots.read(path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return found


def _term_start_done(done: asyncio.Future) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.warning("the term-start entry was not confirmed by a write quorum: %s", done.exception())
    elif not done.cancelled():
        log.info("the term-start entry is confirmed by %d followers", done.result())


def _holding(answer: dict) -> Holding:
    return Holding(answer["node_id"], check_history(answer["history"]), int(answer["applied_seq"]),
                   frozenset(int(s) for s in answer.get("beyond", ())))
