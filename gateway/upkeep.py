"""Upkeep: what keeps this gateway's attempts alive and the mesh's leftovers recovered.

- **Renewal** (every ttl/3): the leases of attempts in flight are renewed in one round trip and
  every in-flight attempt's queue entry is touched, so no other gateway claims it. A lease
  reported lost becomes a `LeaseLost` event; when renewals fail, the watchdog treats leases
  whose local deadline passed as lost (whatever Redis says later).
- **Retries** (every 0.2 s): outcomes that could not be written (Redis errors) are written again.
- **Housekeeping** (every second): queues other gateways created are discovered; attempts HELD
  longer than `max_held` with no worker to take them go back to their queue (`no_worker`);
  entries a dead gateway left pending longer than the claim threshold are claimed and
  requeued (`gateway_lost`); gauges are exported; flows empty for `queue_idle` seconds are
  collected (gateway.queues), so a tenant or token that came and went costs nothing after.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from imagemesh import metrics

from .attempts import Attempt, Decision, LeaseFate, LeaseLost, Phase, Pool, Reason, Requeue, Unassignable
from .feed import Feed
from .inflight import InFlight
from .outcomes import Outcomes
from .queues import QueueName, TaskQueues
from .routing import Routing

log = logging.getLogger("imagemesh.gateway.upkeep")


class Upkeep:
    def __init__(self, *, inflight: InFlight, feed: Feed, outcomes: Outcomes, leases, queues: TaskQueues,
                 routing: Routing, lease_ttl: float, max_held: float, react: Callable[[Attempt, object], bool],
                 attempt_of: Callable, settle, queue_idle: float = 60.0) -> None:
        self.inflight = inflight
        self.feed = feed
        self.outcomes = outcomes
        self.leases = leases
        self.queues = queues
        self.routing = routing
        self.lease_ttl = lease_ttl
        self.max_held = max_held
        self.claim_idle_ms = int(max(lease_ttl * 3, 3.0) * 1000)
        self.queue_idle = queue_idle
        self._empty_since: dict[QueueName, float] = {}  # flow -> when it was first seen empty
        self._react = react
        self._attempt_of = attempt_of   # (entry) -> Attempt, for claimed entries
        self._settle = settle

    # -- renewal -------------------------------------------------------------------------------
    async def renew_loop(self) -> None:
        tick = max(0.05, self.lease_ttl / 3)
        while True:
            await asyncio.sleep(tick)
            try:
                await self.renew()
                metrics.REDIS_UP.set(1)
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                metrics.REDIS_UP.set(0)
                log.warning("renewal failed: %s", type(exc).__name__)
                await self._settle(self.watchdog())
            except Exception:
                log.exception("renewal loop error")

    async def renew(self) -> None:
        held = list(self.inflight)
        leased = {a.lease.lease_id: a for a in held if a.lease is not None}
        if leased:
            renewed, lost = await self.leases.renew([a.lease for a in leased.values()])
            for lease in renewed:  # new local deadlines: the watchdog goes by these
                a = leased.get(lease.lease_id)
                if a is not None and a.lease is not None and a.lease.lease_id == lease.lease_id:
                    a.lease = lease
            settle = []
            for lease in lost:
                a = leased.get(lease.lease_id)
                if a is not None and a.lease is not None and a.lease.lease_id == lease.lease_id:
                    metrics.LEASES_LOST.inc()
                    if self._react(a, LeaseLost()):
                        settle.append(a)
            if settle:
                await self._settle(settle)
        entries = [a.entry for a in self.inflight] + [a.entry for a in self.feed.unstarted()]
        await self.queues.touch(entries)

    def watchdog(self) -> list[Attempt]:
        """Renewals fail: a lease whose local deadline passed is lost, whatever Redis says later
        (it may be granted to someone else by then). Returns the attempts that now settle."""
        now = time.monotonic()
        settle = []
        for a in self.inflight:
            if a.lease is not None and a.lease.deadline <= now:
                metrics.LEASES_LOST.inc()
                if self._react(a, LeaseLost()):
                    settle.append(a)
        return settle

    # -- retries -------------------------------------------------------------------------------
    async def retry_loop(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            try:
                await self.outcomes.retry()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retrying outcomes failed")

    # -- housekeeping ----------------------------------------------------------------------------
    async def housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._settle(self.unheld())
                await self.feed.refresh_queues()
                await self.claim()
                await self.export_gauges()
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                metrics.REDIS_UP.set(0)
                log.warning("housekeeping: Redis error %s", type(exc).__name__)
            except Exception:
                log.exception("housekeeping error")

    def unheld(self) -> list[Attempt]:
        """Attempts HELD longer than `max_held` (their workers left and none came): they go back
        to their queue, where a gateway with workers takes them."""
        now = time.monotonic()
        settle = []
        for a in self.inflight:
            if a.phase is Phase.HELD and now - a.held_since > self.max_held:
                if self._react(a, Unassignable(Reason.NO_WORKER)):
                    settle.append(a)
        return settle

    async def claim(self) -> None:
        """Entries a dead gateway left pending: requeued as attempt + 1 (the claim path)."""
        claimed_all = []
        for pool in Pool:
            for q in list(self.feed.known[pool]):
                claimed = await self.queues.claim(q, self.claim_idle_ms)
                claimed = [e for e in claimed if e.attempt_id not in self.inflight]
                if claimed:
                    log.warning("claimed %d entries of a dead gateway from %s", len(claimed), q.key_id)
                for e in claimed:
                    a = self._attempt_of(e)
                    self.inflight.adopt(a, Decision(Phase.SETTLING, lease=LeaseFate.ABANDON,
                                                    outcome=Requeue(Reason.GATEWAY_LOST, retire=a.raced)))
                    claimed_all.append(a)
        if claimed_all:
            await self._settle(claimed_all)

    async def export_gauges(self) -> None:
        await self._export_keys()
        for pool in Pool:
            queues = sorted(self.feed.known[pool], key=lambda q: (q.key_id, q.tenant, q.klass))
            depths = await self.queues.depth(queues)
            total = sum(d for d, _ in depths.values())
            oldest = max((age for _, age in depths.values()), default=0.0)
            per_key: dict[str, int] = {}
            for q, (depth, _) in depths.items():
                per_key[q.key_id] = per_key.get(q.key_id, 0) + depth
            schedulable = 0
            for key_id, depth in per_key.items():
                if depth == 0:
                    continue
                free = await self.routing.free_slots(key_id, self.leases)
                schedulable += depth if free is None else min(depth, free)
            metrics.QUEUE_DEPTH.labels(pool.value).set(total)
            metrics.QUEUE_OLDEST_AGE.labels(pool.value).set(oldest)
            metrics.SCHEDULABLE_BACKLOG.labels(pool.value).set(schedulable)
            await self._collect(pool, {q: d for q, (d, _) in depths.items()})

    async def _collect(self, pool: Pool, depths: dict) -> None:
        """Collect the pool's flows that stayed empty `queue_idle` seconds with nothing of theirs
        in flight here (the script checks the rest in Redis: nothing pending anywhere)."""
        now = time.monotonic()
        busy = {a.entry.queue for a in self.inflight}
        gone = []
        for q in list(self.feed.known[pool]):
            if depths.get(q, 0) > 0 or q.redis_key(self.queues.prefix) in busy:
                self._empty_since.pop(q, None)
                continue
            since = self._empty_since.setdefault(q, now)
            if now - since >= self.queue_idle and await self.queues.collect(q, self.queue_idle):
                gone.append(q)
        for q in gone:
            self.feed.known[pool].discard(q)
        # Forget flows this gateway no longer knows (collected here, or by another gateway).
        for q in [q for q in self._empty_since if q.pool == pool.value and q not in self.feed.known[pool]]:
            del self._empty_since[q]
        if gone:
            self.feed.fair.forget(gone)
            metrics.QUEUES_COLLECTED.inc(len(gone))

    async def _export_keys(self) -> None:
        """Per-key lease gauges (bounded labels: see Routing.metric_label)."""
        keys = sorted({q.key_id for q in self.feed.known[Pool.GENERATE] if self.routing.is_leased_key(q.key_id)})
        for key_id in keys:
            label = self.routing.metric_label(key_id)
            if label == "other":
                continue
            state = await self.leases.state(key_id)
            metrics.LEASE_IN_USE.labels(label).set(state.in_use)
            metrics.LEASE_LIMIT.labels(label).set(state.limit)
            metrics.LEASE_WAITERS.labels(label).set(state.waiting)
            metrics.LEASE_QUARANTINED.labels(label).set(1 if state.quarantined else 0)
