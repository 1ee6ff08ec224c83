"""The dispatcher: moves queued attempts to workers under the keys' leases, and results back.

It is a set of parts with one concern each, sharing one owner of attempt state:

    gateway.attempts   the state machine: phases, events, outcomes, and decide() (pure)
    gateway.inflight   InFlight: the attempts this gateway works on (the only writer of phases)
    gateway.feed       queues ─▶ leases ─▶ read ─▶ START ─▶ HELD
    gateway.assign     HELD ─▶ worker credit ─▶ Assignment frame (and hedge timers)
    gateway.outcomes   SETTLING ─▶ Redis: FINISH | NEXT + push | ack, retried until done
    gateway.upkeep     lease renewal + watchdog, entry touches, retries, claims, gauges

This class wires them, turns what workers and the other replicas say into events
(`react`), and owns the lifecycle: `start()`, `drain(grace)`, `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from imagemesh.credentials import Sealer
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import worker_pb2 as wpb

from .assign import Assigner
from .attempts import (Attempt, Cancel, Event, Phase, Policy, Pool, Reason,
                       Result, Returned, Unassignable, WorkerGone)
from .batches import BatchStore
from .budget import DailyBudget
from .dedup import Dedup
from .entries import QueueEntry
from .fairness import FairShare
from .feed import Feed
from .inflight import InFlight
from .outcomes import Outcomes
from .pools import Pool as WorkerPool
from .pools import Worker
from .queues import QueueName, TaskQueues
from .routing import Routing
from .tokens import BatchTokens
from .upkeep import Upkeep

if TYPE_CHECKING:
    from .outputs import Outputs

log = logging.getLogger("imagemesh.gateway.dispatch")

POOLS = tuple(p.value for p in Pool)


@dataclass(frozen=True)
class DispatchSettings:
    lease_ttl: float = 10.0
    max_job_runtime: float = 600.0
    max_attempts: int = 3
    read_batch: int = 256
    heartbeat_interval: float = 2.0
    # A raced task starts its next provider this long after the first one.
    hedge_delay: float = 3.0
    # An attempt that waits this long for a worker credit goes back to its queue.
    max_held: float = 10.0
    # A tenant's queue under a key, empty this long, is collected.
    queue_idle: float = 60.0
    # tenant -> its weight in fair shares (default 1).
    tenant_weights: tuple[tuple[str, float], ...] = ()


class Dispatcher:
    def __init__(self, *, redis: aioredis.Redis, batches: BatchStore, queues: TaskQueues,
                 leases, routing: Routing, sealer: Sealer, settings: DispatchSettings,
                 cancel_channel: str, dedup: Dedup, budget: DailyBudget, outputs: Outputs | None = None) -> None:
        self.r = redis
        self.queues = queues
        self.routing = routing
        self.s = settings
        self.cancel_channel = cancel_channel
        self.outputs = outputs
        self.inflight = InFlight()
        self.pools = {name: WorkerPool(name, self.inflight.count) for name in POOLS}
        self.tokens = BatchTokens(batches, sealer, routing)
        self.outcomes = Outcomes(redis=redis, batches=batches, queues=queues, leases=leases, routing=routing,
                                 dedup=dedup, tokens=self.tokens, inflight=self.inflight,
                                 cancel_channel=cancel_channel, note_queue=self.note_queue,
                                 reuse=lambda leases: self.feed.reuse(leases))
        self.assigner = Assigner(inflight=self.inflight, pools=self.pools, tokens=self.tokens, routing=routing,
                                 budget=budget, max_job_runtime=settings.max_job_runtime,
                                 lease_ttl=settings.lease_ttl, hedge_delay=settings.hedge_delay,
                                 react=self.react, settle=self.settle, hedge=self._hedge, outputs=outputs)
        self.feed = Feed(queues=queues, batches=batches, leases=leases, routing=routing, inflight=self.inflight,
                         pools=self.pools, read_batch=settings.read_batch, assign=self.assigner.assign,
                         settle=self.settle, fair=FairShare(dict(settings.tenant_weights)))
        self.upkeep = Upkeep(inflight=self.inflight, feed=self.feed, outcomes=self.outcomes, leases=leases,
                             queues=queues, routing=routing, lease_ttl=settings.lease_ttl,
                             max_held=settings.max_held, react=self.react, attempt_of=self._claimed,
                             settle=self.settle, queue_idle=settings.queue_idle)
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def accepting(self) -> bool:
        return self.feed.accepting

    async def start(self) -> None:
        await self.feed.refresh_queues()
        for pool in Pool:
            self._tasks.append(asyncio.create_task(self.feed.run(pool), name=f"feed-{pool.value}"))
        self._tasks.append(asyncio.create_task(self.upkeep.renew_loop(), name="renew"))
        self._tasks.append(asyncio.create_task(self.upkeep.retry_loop(), name="retry"))
        self._tasks.append(asyncio.create_task(self.upkeep.housekeeping_loop(), name="housekeeping"))

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._background, *self.feed._waiters]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    async def drain(self, grace: float) -> None:
        """Stop reading, let in-flight attempts finish within `grace`, hand back the rest."""
        self.feed.accepting = False
        for w in [w for p in self.pools.values() for w in p.workers.values()]:
            w.outbox.put_goaway()
        deadline = time.monotonic() + grace
        while any(a.phase is not Phase.SETTLING for a in self.inflight) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for a in self.inflight:
            self.react(a, Unassignable(Reason.DRAIN))
        # Write what is left (a few tries); entries whose outcome can't be written stay pending
        # in Redis and another gateway claims them.
        for _ in range(20):
            await self.outcomes.retry()
            if not len(self.inflight):
                break
            await asyncio.sleep(0.1)

    # -- queues ----------------------------------------------------------------------------------
    def wake(self, pool: str | None = None) -> None:
        self.feed.wake(pool)

    def note_queue(self, q: QueueName) -> None:
        self.feed.note_queue(q)

    async def refresh_queues(self) -> None:
        await self.feed.refresh_queues()

    # -- events ----------------------------------------------------------------------------------
    def react(self, a: Attempt, event: Event) -> bool:
        """Apply `event` to `a` (through InFlight); tell its worker to cancel if that was
        decided. True when the attempt now settles (the caller settles it)."""
        d = self.inflight.handle(a, event, self._policy(a, event))
        if d.ignored:
            return False
        if d.send_cancel and a.worker_id is not None:
            worker = self.pools[a.pool.value].workers.get(a.worker_id)
            if worker is not None:
                worker.outbox.put_cancel(a.attempt_id)
        return d.phase is Phase.SETTLING

    def _policy(self, a: Attempt, event: Event) -> Policy:
        nxt = None
        if (isinstance(event, Result) and event.result.state == pb.FAILED and event.result.fallback_ok
                and a.pool is Pool.GENERATE):
            nxt = self.routing.next_provider(a.task, a.entry.provider_index)
        return Policy(max_attempts=self.s.max_attempts, next_provider=nxt)

    async def settle(self, attempts: list[Attempt]) -> None:
        await self.outcomes.settle(attempts)

    def _settle_soon(self, attempts: list[Attempt]) -> None:
        if not attempts:
            return
        t = asyncio.create_task(self.settle(attempts))
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    def _claimed(self, e: QueueEntry) -> Attempt:
        try:
            return self.feed.attempt_for(e, None)
        except Exception:
            log.exception("undecodable task in claimed entry %s of %s", e.entry_id, e.queue)
            return Attempt(entry=e, task=pb.Task(), pool=Pool.GENERATE, provider="", key_id="")

    # -- what workers say ------------------------------------------------------------------------
    async def on_results(self, worker: Worker, results: list[wpb.AttemptResult]) -> None:
        """Results of a worker's frame. Each is applied at once (the attempts leave the
        worker before this returns), then the outcomes are written; a Redis error there is
        logged and retried, never raised."""
        settle = []
        stored: dict[str, int] = {}
        for r in results:
            a = self.inflight.get(r.attempt_id)
            if a is None or a.worker_id != worker.worker_id:
                continue  # stale: the attempt was requeued or claimed meanwhile
            if self.outputs is not None:
                # Judged before deciding: a result naming someone else's objects, or inline
                # bytes past the limit, is a failure.
                for group, n in self.outputs.check(a.tenant, a.entry.batch_id, a.entry.index,
                                                   a.entry.attempt, r).items():
                    stored[group] = stored.get(group, 0) + n
            if a.provider:
                self.routing.record(a.provider, r)
            if self.react(a, Result(r)):
                settle.append(a)
        if settle:
            await self.settle(settle)
        if stored:
            await self.outputs.count(stored)  # type: ignore[union-attr]
        self.pools[worker.pool].export()

    async def on_worker_lost(self, worker: Worker) -> None:
        """The stream ended without a drain: its attempts run nowhere we can see. Their leases
        are left to expire into zombies (the provider jobs may still run) and the tasks go back
        to their queues as attempt + 1."""
        lost = [a for a in self.inflight.of_worker(worker.worker_id) if self.react(a, WorkerGone())]
        if lost:
            log.warning("worker %s lost with %d attempts in flight; requeueing them", worker.worker_id, len(lost))
            await self.settle(lost)

    async def on_returned(self, worker: Worker, attempt_ids: list[str]) -> None:
        """A draining worker gave these back unstarted or cancelled: run them elsewhere."""
        back = []
        for aid in attempt_ids:
            a = self.inflight.get(aid)
            if a is not None and a.worker_id == worker.worker_id and self.react(a, Returned()):
                back.append(a)
        await self.settle(back)

    # -- what other replicas say -----------------------------------------------------------------
    async def announce_cancel(self, batch_id: str) -> None:
        """Tell every gateway (this one included) to stop the batch's running attempts."""
        await self.r.publish(self.cancel_channel, "b:" + batch_id)

    def on_cancel_message(self, message: str) -> None:
        """`b:<batch>`: a cancelled batch; `t:<task>`: a raced task someone won. Attempts here
        are cancelled at their workers; their results, when they come, are stale."""
        kind, _, ident = message.partition(":")
        settle = []
        for a in self.inflight:
            if kind == "b" and a.entry.batch_id == ident:
                event = Cancel(Reason.BATCH_CANCELLED)
            elif kind == "t" and a.entry.task_id == ident:
                event = Cancel(Reason.RACE_LOST)
            else:
                continue
            if self.react(a, event):
                settle.append(a)
        self._settle_soon(settle)

    # -- hedging ---------------------------------------------------------------------------------
    def _hedge(self, a: Attempt) -> None:
        if a.phase is Phase.ASSIGNED and a.attempt_id in self.inflight and not a.hedged:
            a.hedged = True
            t = asyncio.create_task(self.outcomes.hedge(a))
            self._background.add(t)
            t.add_done_callback(self._background.discard)

