"""The assigner: gives HELD attempts to workers that granted credits, as Assignment frames.

For each held attempt, in the order it was read: spend its key's daily budget (if any), open
its provider token, take a worker credit, and put the Assignment in that worker's outbox (one
frame carries everything ready for a worker). A raced attempt also gets a hedge timer.

What can go wrong: a Redis error (reading sealed tokens, the budget) puts the attempts back at
the front of their line, HELD, and is raised to the feed loop, which backs off and comes back:
nothing is dropped and their leases keep being renewed meanwhile. A token that can't be opened,
or a spent budget, fails that task alone (decided as `Failed`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


from imagemesh import metrics, tracing
from imagemesh.errors import RateLimited, TaskFailure
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import worker_pb2 as wpb

from .attempts import Assigned, Attempt, Failed, Phase, Pool
from .budget import DailyBudget
from .inflight import InFlight
from .pools import Pool as WorkerPool
from .routing import Routing
from .tokens import BatchTokens


class Assigner:
    def __init__(self, *, inflight: InFlight, pools: dict[str, WorkerPool], tokens: BatchTokens,
                 routing: Routing, budget: DailyBudget, max_job_runtime: float, lease_ttl: float,
                 hedge_delay: float, react: Callable[[Attempt, object], bool],
                 settle: Callable[[list[Attempt]], Awaitable[None]],
                 hedge: Callable[[Attempt], None], outputs=None) -> None:
        self.inflight = inflight
        self.pools = pools
        self.tokens = tokens
        self.routing = routing
        self.budget = budget
        self.max_job_runtime = max_job_runtime
        self.lease_ttl = lease_ttl
        self.hedge_delay = hedge_delay
        self._react = react        # the dispatcher's event handler: True when the attempt settles
        self._settle = settle
        self._hedge = hedge
        self.outputs = outputs  # gateway.outputs.Outputs, or None: no storage side at all
        self._locks = {p: asyncio.Lock() for p in Pool}

    async def assign(self, pool: Pool) -> None:
        """Send as many held attempts of `pool` as its workers have credits for. Raises
        RedisError (the attempts not sent are back in their line)."""
        async with self._locks[pool]:  # one assigner per pool at a time keeps the line's order
            workers = self.pools[pool.value]
            batch: list[Attempt] = []
            while len(batch) < workers.credits:
                a = self.inflight.next_held(pool)
                if a is None:
                    break
                batch.append(a)
            if not batch:
                return
            settle: list[Attempt] = []
            try:
                allowed = await self.budget.spend([a.key_id for a in batch])
            except BaseException:
                self._put_back(batch)
                raise
            runnable = []
            for a, ok in zip(batch, allowed):
                if ok:
                    runnable.append(a)
                    continue
                limit = self.budget.limit_for(a.key_id)
                failure = RateLimited(f"the daily budget of {limit} predictions for key "
                                      f"{self.routing.alias(a.key_id)} is spent; it resets at 00:00 UTC",
                                      retryable=False)
                if self._react(a, Failed(failure)):
                    settle.append(a)
            try:
                for k, a in enumerate(runnable):
                    try:
                        msg = await self._assignment(a)
                    except TaskFailure as failure:
                        if self._react(a, Failed(failure)):
                            settle.append(a)
                        continue
                    except BaseException:
                        self._put_back(runnable[k:])
                        raise
                    if a.phase is not Phase.HELD:
                        continue  # its lease was lost, or it was cancelled, while we awaited
                    worker = workers.take()
                    if worker is None:  # the credits went with a worker that left meanwhile
                        self._put_back([a])
                        continue
                    self._react(a, Assigned(worker.worker_id))
                    worker.outbox.put_assignment(msg)
                    if a.raced and self.routing.next_provider(a.task, a.entry.provider_index, probe=False) is not None:
                        asyncio.get_running_loop().call_later(self.hedge_delay, self._hedge, a)
                    if a.lease is not None:
                        metrics.LEASE_WAIT.labels(self.routing.metric_label(a.key_id)).observe(a.leased_at - a.read_at)
            finally:
                workers.export()
                if settle:
                    await self._settle(settle)

    def _put_back(self, attempts: list[Attempt]) -> None:
        for a in reversed(attempts):
            self.inflight.put_back(a)

    async def _assignment(self, a: Attempt) -> wpb.Assignment:
        """Raises RedisError (sealed tokens, storage indexing), TaskFailure (a token this gateway
        can't open, an input that is not the tenant's)."""
        token = None
        if a.provider and self.routing.needs_token(a.provider):
            token = await self.tokens.token(a.entry.batch_id, a.provider)
        budget = self.max_job_runtime
        if a.lease is not None:
            # Never dispatch work that could outlive the lease's hard limit.
            budget = min(budget, max(0.0, a.lease.deadline - time.monotonic() + self.max_job_runtime - self.lease_ttl))
        msg = wpb.Assignment(
            attempt_id=a.attempt_id, task_id=a.entry.task_id, attempt=a.entry.attempt,
            fence=a.lease.fence if a.lease is not None else 0, budget_ms=int(budget * 1000),
            output_filename=a.task.output_filename, provider=a.provider, token=token or "",
            trace_context=tracing.dispatched(a.entry.trace, since=a.read_at, attempt=a.entry.attempt,
                                             provider=a.provider or None))
        if a.entry.stage == "enhance":
            msg.enhance.CopyFrom(a.task.then_enhance)
            msg.inputs.extend(pb.TaskResult.FromString(a.entry.carry).files)
        elif a.pool is Pool.ENHANCE:
            msg.enhance.CopyFrom(a.task.enhance)
        else:
            msg.generate.CopyFrom(a.task.generate)
        if self.outputs is not None:
            if not a.tenant:
                a.tenant = a.entry.tenant or await self.outputs.tenant_of(a.entry.batch_id)
            await self.outputs.prepare(msg, a.tenant, a.entry.batch_id, a.entry.index, a.entry.attempt, a.task)
        return msg
