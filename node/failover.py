"""Automatic failover with etcd as the coordinator, the way Patroni runs PostgreSQL.

Every ``LEADER_TTL / 4``, and at once when a watch sees the leader key change, each node
runs one cycle: read the leader key (and the pause key) from etcd, let
``node.core.coordination.decide`` pick one action, do it, and keep the sentence that says why
(``/status`` shows it). The leader key names the leader and is bound to a
lease of ``LEADER_TTL``:

- the leader renews the lease every third of the TTL; if it cannot, it stops acknowledging
  writes when its own clock says the lease is over (minus a margin), before etcd lets anyone
  else take the key, and steps down;
- when the key is gone, a follower asks the others what they hold, and races only if enough
  answered (``N - W + 1``) and none is ahead of it; the winner creates the key in one
  transaction that also moves etcd's term counter on, and promotes itself in that term with
  the promotion of ``node.replica`` (promises from ``N - W + 1``, what they hold fetched).

The key only says who should lead. What keeps two leaders from both acknowledging is the
term: the promotion's promises fence the old leader, whatever it believes about the lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from node.core.coordination import Decision, LeaderLease, Position, View, contact_quorum, decide, healthiest, in_touch
from node.core.terms import check_history, last_leader, promise_quorum
from node.etcd import EtcdClient, EtcdError, LeaseGone, TermPassed
from node.tasks import TaskGroup
from node.validation import ApiError

log = logging.getLogger(__name__)

WATCH_DURATION_S = 60.0  # one watch stream's life; then it is opened again


class Coordinator:
    def __init__(self, node, etcd: EtcdClient, clock=time.monotonic) -> None:
        config = node.config
        self.node, self.etcd, self.clock = node, etcd, clock
        self.ttl_s = config.leader_ttl_ms / 1000
        self.lease = LeaderLease(self.ttl_s, margin_s=self.ttl_s / 6)
        self.lease_id: int | None = None
        prefix = config.etcd_prefix
        self.prefix = prefix
        self.leader_key, self.term_key, self.pause_key = f"{prefix}/leader", f"{prefix}/term", f"{prefix}/pause"
        self.failover_key = f"{prefix}/last_failover"  # so every node's /status shows the last one
        self.automatic = config.failover == "auto"
        self.holder: str | None = None
        self.paused = False
        self.reachable = False
        self.last_decision: str | None = None
        self.last_failover: dict | None = None
        self._leaderless_since: float | None = None
        self.background = TaskGroup("coordinator")
        self._stopped = asyncio.Event()
        self._woken = asyncio.Event()  # set by the leader key's watch
        self.members: list[dict] = []  # each etcd endpoint: does it answer (every LEADER_TTL)
        self._cycle_lock = asyncio.Lock()

    # --- the loop -------------------------------------------------------------------------

    def start(self) -> None:
        self.background.spawn(self._run())
        self.background.spawn(self._watch())
        self.background.spawn(self._check_members())

    async def _run(self) -> None:
        while not self._stopped.is_set():
            self._woken.clear()
            try:
                await self.cycle()
            except Exception:  # noqa: BLE001 - one bad cycle must not end failover
                log.exception("coordinator cycle failed")
            await self._sleep(self._next_cycle_in())

    async def _sleep(self, seconds: float) -> None:
        """Until the next cycle is due, the watch saw the leader key change, or close()."""
        waits = [asyncio.ensure_future(self._stopped.wait()), asyncio.ensure_future(self._woken.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _watch(self) -> None:
        """Watch the leader key and run a cycle as soon as it changes (a dead leader's key
        expiring, a switchover), instead of at the next quarter of the TTL; a broken watch is
        opened again after a quarter of the TTL, the cycles going on meanwhile."""
        while not self._stopped.is_set():
            try:
                await self.etcd.watch(self.leader_key, self._woken.set, duration_s=WATCH_DURATION_S)
            except EtcdError as exc:
                log.debug("leader key watch: %s", exc)
                await self._sleep_unwoken(self.ttl_s / 4)

    async def _sleep_unwoken(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopped.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _next_cycle_in(self) -> float:
        """A quarter of the TTL, or sooner when the lease's renewal falls due (every third of
        the TTL): a cycle that only checks every quarter would renew every half."""
        due = self.lease.next_renewal()
        if due is None:
            return self.ttl_s / 4
        return max(0.0, min(self.ttl_s / 4, due - self.clock()))

    async def _check_members(self) -> None:
        """Every LEADER_TTL: which etcd endpoints answer (for /status), off the cycle's path."""
        while not self._stopped.is_set():
            try:
                found = await self.etcd.status(timeout=min(1.0, self.ttl_s / 4))
                self.members = [{"endpoint": m.endpoint, "reachable": m.ok, "has_leader": bool(m.leader),
                                 **({"error": m.error} if m.error else {})} for m in found]
            except Exception as exc:  # noqa: BLE001 - /status keeps the last answer
                log.debug("etcd member status: %s", exc)
            await self._sleep_unwoken(self.ttl_s)

    async def cycle(self) -> Decision:
        """Read etcd, decide one thing, do it."""
        async with self._cycle_lock:
            await self._read_etcd()
            now = self.clock()
            leading = self.node.role == "leader"
            decision = decide(View(self.node.config.node_id, leading, self.holder, self.reachable,
                                   self.lease.acknowledging(now), self.lease_id is not None, self.automatic,
                                   self.paused, *(self._contact() if leading else (0, 0))))
            if decision.sentence != self.last_decision:
                log.info("failover: %s", decision.sentence)
            self.last_decision = decision.sentence
            await getattr(self, "_" + decision.action.name.lower())()
            return decision

    def _contact(self) -> tuple[int, int]:
        """(followers the leader heard from within the window, how many it needs). The window
        spans a lease and a /health probe interval, so one slow probe does not cost the key."""
        window = self.ttl_s + self.node.config.catchup_interval_ms / 1000
        config = self.node.config
        return (in_touch(self.node.role_obj.last_heard, time.monotonic(), window),
                contact_quorum(len(self.node.voters(config.node_id)), config.write_quorum))

    async def _read_etcd(self) -> None:
        try:
            found = await self.etcd.get_prefix(self.prefix + "/")  # the key, the pause, the last failover: one read
            held = found.get(self.leader_key)
            self.paused = self.pause_key in found
            self.holder = held.text if held is not None else None
            if self.failover_key in found:
                self.last_failover = _failover_record(found[self.failover_key].text)
            if not self.reachable:
                log.info("etcd reachable at %s", self.etcd.current_endpoint)
            self.reachable = True
        except EtcdError as exc:
            if self.reachable:
                log.warning("etcd unreachable: %s", exc)
            self.reachable = False

    def may_acknowledge(self) -> bool:
        return self.lease.acknowledging(self.clock())

    # --- the actions ----------------------------------------------------------------------

    async def _renew(self) -> None:
        if not self.reachable or self.lease_id is None or not self.lease.renew_due(self.clock()):
            return
        await self._keepalive()

    async def _keepalive(self) -> None:
        if self.lease_id is None:
            return
        sent = self.clock()
        try:
            self.lease.renewed(sent, await self.etcd.keepalive(self.lease_id))
        except LeaseGone:
            self.lease.lost()
            self.lease_id = None
        except EtcdError as exc:
            log.warning("could not renew the leader lease (%.1f s left): %s", self.lease.remaining(self.clock()), exc)

    async def _acquire(self) -> None:
        """A leader without the key (a new cluster's first leader, one back from a restart, or
        after etcd lost the key): take it for the term it leads, which etcd allows only while it
        handed out no later term; else step down and let the healthiest race."""
        term = self.node.state.term
        try:
            mine = self.node.config.node_id if self.holder == self.node.config.node_id else None
            acquired, _ = await self._take_key(known_term=term - 1, keep_term=term, from_holder=mine)
        except TermPassed as passed:
            log.warning("etcd's term counter is at %d, past this leader's term %d: stepping down", passed.stored, term)
            await self.node.demote("the term counter in etcd moved past this leader's term")
            return
        if acquired is not None:
            log.info("took the leader key for term %d", term)

    async def _step_down(self) -> None:
        if self.node.role == "leader":
            await self.node.demote(self.last_decision or "lost the leader key")
        await self._release()

    async def _follow(self) -> None:
        self._leaderless_since = None

    async def _wait(self) -> None:
        return None

    async def _check_health(self) -> None:
        """The key is free: race for it only if this node is the healthiest follower."""
        if self.node.config.node_id in self.node.members.learners():
            self.last_decision = "this node is a learner (still catching up after joining): it does not race"
            return
        now = self.clock()
        if self._leaderless_since is None:
            self._leaderless_since = now
        answers = await self._positions()
        alive_leader = [a for a in answers if a.get("role") == "leader" and a["term"] >= self.node.state.term]
        if alive_leader:
            self.last_decision = f"{alive_leader[0]['node_id']} answers as the leader of term " \
                                 f"{alive_leader[0]['term']}: waiting for it to take the key"
            return
        electorate = self._electorate(answers)
        needed = promise_quorum(len(electorate), self.node.config.write_quorum)
        others = [_position(a) for a in answers if a["node_id"] in electorate]
        verdict = healthiest(self._my_position(), others, needed)
        self.last_decision = verdict.reason
        if verdict.race:
            await self._race(max([self.node.state.term] + [a["term"] for a in answers]), now)

    async def _race(self, known_term: int, began: float, from_holder: str | None = None) -> dict | None:
        acquired, _ = await self._take_key(known_term, from_holder=from_holder)
        if acquired is None:
            return None
        deposed = last_leader(self.node.state.history)
        keeping = asyncio.ensure_future(self._keep_lease())
        try:
            summary = await self.node.promote(term=acquired.term)
        except Exception as exc:  # noqa: BLE001 - the key must not stay with a node that does not lead
            log.warning("won the leader key for term %d but the promotion failed: %s", acquired.term, exc)
            await self._release()
            raise
        finally:
            keeping.cancel()
        took = self.clock() - (self._leaderless_since or began)
        self.last_failover = {"at": time.time(), "from": deposed, "to": self.node.config.node_id,
                              "term": acquired.term, "unavailable_s": round(took, 2)}
        self._leaderless_since = None
        log.warning("failover: %s now leads term %d (from %s), %.2f s after the leader key was found free",
                    self.node.config.node_id, acquired.term, deposed, took)
        try:
            await self.etcd.put(self.failover_key, json.dumps(self.last_failover))
        except EtcdError as exc:
            log.warning("could not record the failover in etcd (only this node's /status shows it): %s", exc)
        return summary

    async def _keep_lease(self) -> None:
        """Renew the lease while a promotion runs (the cycle that races waits for it): a
        promotion that waits on a slow follower must not outlast the lease it won."""
        while self.lease_id is not None:
            await asyncio.sleep(self.ttl_s / 3)
            await self._keepalive()

    async def _take_key(self, known_term: int, keep_term: int | None = None, from_holder: str | None = None):
        """Grant a lease and create the leader key with it (or move it from ``from_holder``: a
        switchover); (Acquired, sent) or (None, sent). :class:`TermPassed` (with the lease
        revoked) when ``keep_term`` is no longer etcd's."""
        sent = self.clock()
        lease_id = None
        me = self.node.config.node_id
        try:
            lease_id = await self.etcd.grant(int(self.ttl_s))
            acquired = await self.etcd.create_leader(self.leader_key, me, lease_id, self.term_key, known_term,
                                                     keep_term=keep_term, holder=from_holder)
        except TermPassed:
            await self._revoke(lease_id)
            raise
        except EtcdError as exc:
            log.warning("could not take the leader key: %s", exc)
            return None, sent
        if acquired is None:
            await self._revoke(lease_id)
            return None, sent
        self.lease_id = lease_id
        self.lease.renewed(sent, self.ttl_s)
        self.holder = self.node.config.node_id
        return acquired, sent

    async def _release(self) -> None:
        self.lease.lost()
        lease_id, self.lease_id = self.lease_id, None
        try:
            await self.etcd.release_leader(self.leader_key, self.node.config.node_id)
        except EtcdError:
            pass
        if lease_id is not None:
            await self._revoke(lease_id)

    async def _revoke(self, lease_id: int) -> None:
        try:
            await self.etcd.revoke(lease_id)
        except EtcdError:
            pass  # it expires by itself

    # --- positions ------------------------------------------------------------------------

    async def _positions(self) -> list[dict]:
        from node.replica import Promotion

        promotion = Promotion(self.node)
        try:
            found = await promotion.probe()
        finally:
            promotion.client.close()
        return [a for a in found.values() if isinstance(a, dict)]

    def _electorate(self, answers: list[dict]) -> list[str]:
        histories = [self.node.state.history] + [check_history(a["history"]) for a in answers]
        newest = max(histories, key=lambda h: h[-1][0] if h else 0)
        deposed = last_leader(newest)
        return self.node.electorate(deposed, answers)

    def _my_position(self) -> Position:
        holding = self.node.holding()
        return _position(holding)

    # --- operators ------------------------------------------------------------------------

    async def promote_by_hand(self) -> dict:
        """``POST /admin/promote`` with a coordinator: through the same lock."""
        async with self._cycle_lock:
            answers = await self._positions()
            # Read the key after the dry run, which can take seconds (a paused node answers
            # nobody): a paused leader's key may have expired meanwhile.
            await self._read_etcd()
            if not self.reachable:
                raise ApiError(503, "etcd is unreachable: a promotion needs the leader key; try again when it is back")
            # A key held by another node is a planned switchover: the key moves to this node in
            # the next term, and the promotion's promises (the old leader's among them) fence it.
            from_holder = self.holder if self.holder not in (None, self.node.config.node_id) else None
            known = max([self.node.state.term] + [a["term"] for a in answers])
            summary = await self._race(known, self.clock(), from_holder=from_holder)
            if summary is None:
                raise ApiError(409, "the leader key changed hands meanwhile; see /health for who leads, and try again")
            return dict(summary, switchover_from=from_holder) if from_holder else summary

    async def set_paused(self, paused: bool) -> dict:
        try:
            if paused:
                await self.etcd.put(self.pause_key, self.node.config.node_id)
            else:
                await self.etcd.delete(self.pause_key)
        except EtcdError as exc:
            raise ApiError(503, f"etcd is unreachable, the pause could not be {'set' if paused else 'lifted'}: {exc}") \
                from None
        self.paused = paused
        return {"paused": paused}

    def status(self) -> dict[str, Any]:
        return {"mode": self.node.config.failover, "paused": self.paused, "etcd_endpoints": list(self.etcd.endpoints),
                "etcd_reachable": self.reachable, "etcd_endpoint": self.etcd.current_endpoint,
                "etcd_members": self.members, "leader_key_holder": self.holder,
                "lease_ttl_s": self.ttl_s, "lease_remaining_s": round(self.lease.remaining(self.clock()), 2),
                "last_decision": self.last_decision, "last_failover": self.last_failover}

    async def close(self) -> None:
        self._stopped.set()
        await self.background.cancel_all()
        if self.node.role == "leader":
            await self._release()  # a clean stop hands the key on at once
        self.etcd.close()


def _failover_record(text: str) -> dict | None:
    """The last failover as etcd holds it; None (and /status shows none) if it is unreadable."""
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _position(holding: dict) -> Position:
    history = check_history(holding["history"])
    beyond = holding.get("beyond") or []
    last = max([int(holding["applied_seq"])] + [int(s) for s in beyond])
    return Position(holding["node_id"], history[-1][0] if history else 0, last, int(holding.get("priority", 0)),
                    can_race=holding.get("etcd_reachable") is not False)
