"""The dispatcher: moves queued attempts to workers under the keys' leases, and results back.

For each pool, one loop takes work from every queue whose key is not waiting for a lease, as
much as the pool's workers have credits for:

    limited key:  leases for n slots ─▶ read n entries ─┐
                     │ none free: one waiter per key     │
                     ▼ takes a FIFO ticket; that queue   ├─▶ start (task still live?) ─▶ a
                       is not read until it is served    │    worker's credit ─▶ Assignment frame
    other queues: read n entries ───────────────────────┘          │ no
                                                                   ▼ ack (and release its lease)

A saturated key's entries stay in its stream while other keys' queues go on being read: no
head-of-line blocking, and the queue depth in Redis is exact.

Results come back in frames; each frame is recorded with a few pipelined round trips
(`BatchStore.finish_many`, lease release, ack). A failed attempt is re-queued as attempt + 1
when that can help (worker lost, lease lost, fallback to the next provider), up to
`max_attempts`.

What this process holds in memory is only what it is working on right now (attempts in flight
on its own worker streams, and entries in hand waiting for a credit): all of it is also
pending in Redis, so another gateway claims it if this one dies.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from imagemesh import metrics
from imagemesh.credentials import Sealer
from imagemesh.errors import RateLimited, TaskFailure, WorkerLost
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import worker_pb2 as wpb

from .batches import BatchStore, task_id
from .budget import DailyBudget
from .dedup import Dedup
from .pools import Pool, Worker
from .queues import Entry, QueueName, TaskQueues
from .routing import ENHANCE_KEY, Routing

if TYPE_CHECKING:
    from .outputs import Outputs

log = logging.getLogger("imagemesh.gateway.dispatch")

POOLS = ("generate", "enhance")


@dataclass(eq=False)
class Attempt:
    """One attempt of one task, from the moment this gateway read its entry."""

    entry: Entry
    task: pb.Task
    pool: str
    provider: str
    key_id: str
    read_at: float = field(default_factory=time.monotonic)
    lease: object | None = None
    leased_at: float = 0.0
    worker: Worker | None = None
    cancel_reason: str | None = None
    hedged: bool = False

    @property
    def raced(self) -> bool:
        return self.pool == "generate" and not self.entry.stage and self.task.generate.race

    @property
    def attempt_id(self) -> str:
        return f"{task_id(self.entry.batch_id, self.entry.index)}#{self.entry.attempt}"


@dataclass(eq=False)
class Requeue:
    """Put an attempt back in a queue as attempt + 1; None fields keep the attempt's own."""

    attempt: Attempt
    reason: str
    provider_index: int | None = None
    stage: str | None = None
    carry: bytes | None = None
    # Counts against max_attempts (a move to the next stage does not).
    counts: bool = True


@dataclass(frozen=True)
class DispatchSettings:
    lease_ttl: float = 10.0
    max_job_runtime: float = 600.0
    max_attempts: int = 3
    read_batch: int = 256
    heartbeat_interval: float = 2.0
    # A raced task starts its next provider this long after the first one.
    hedge_delay: float = 3.0


class Dispatcher:
    def __init__(self, *, redis: aioredis.Redis, batches: BatchStore, queues: TaskQueues,
                 leases, routing: Routing, sealer: Sealer, settings: DispatchSettings,
                 cancel_channel: str, dedup: Dedup, budget: DailyBudget,
                 outputs: Outputs | None = None) -> None:
        self.r = redis
        self.batches = batches
        self.queues = queues
        self.leases = leases
        self.routing = routing
        self.sealer = sealer
        self.s = settings
        self.cancel_channel = cancel_channel
        self.dedup = dedup
        self.budget = budget
        self.outputs = outputs
        self.pools = {name: Pool(name) for name in POOLS}
        self.inflight: dict[str, Attempt] = {}
        self._known_queues: dict[str, set[QueueName]] = {name: set() for name in POOLS}
        self._blocked: set[QueueName] = set()
        self._busy: set[QueueName] = set()  # queues that had entries at the last read
        self._wake = {name: asyncio.Event() for name in POOLS}
        self._tokens: OrderedDict[str, dict[str, bytes]] = OrderedDict()
        self._tasks: list[asyncio.Task] = []
        self._waiters: set[asyncio.Task] = set()
        self.accepting = True

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.refresh_queues()
        for name in POOLS:
            self._tasks.append(asyncio.create_task(self._pool_loop(name), name=f"pool-{name}"))
        self._tasks.append(asyncio.create_task(self._renew_loop(), name="renew"))
        self._tasks.append(asyncio.create_task(self._housekeeping_loop(), name="housekeeping"))

    async def stop(self) -> None:
        for t in [*self._tasks, *self._waiters]:
            t.cancel()
        for t in [*self._tasks, *self._waiters]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    def wake(self, pool: str | None = None) -> None:
        for name in ([pool] if pool in self._wake else POOLS):
            self._wake[name].set()

    async def refresh_queues(self) -> None:
        for q in await self.queues.names():
            if q.pool in self._known_queues and q not in self._known_queues[q.pool]:
                self._known_queues[q.pool].add(q)
                self.wake(q.pool)

    def note_queue(self, q: QueueName) -> None:
        if q not in self._known_queues[q.pool]:
            self._known_queues[q.pool].add(q)
        self.wake(q.pool)

    # -- reading and leasing ---------------------------------------------------------------------
    async def _pool_loop(self, name: str) -> None:
        pool = self.pools[name]
        wake = self._wake[name]
        backoff = 0.05
        while True:
            try:
                if not self.accepting:
                    await asyncio.sleep(0.1)
                    continue
                if not await pool.wait_for_credit(timeout=1.0):
                    continue
                wake.clear()
                ready = [q for q in self._known_queues[name] if q not in self._blocked]
                found = 0
                if ready:
                    # Share the credits among the queues that had work last time: an idle
                    # queue reads nothing whatever its share, and counting it would only make
                    # the busy ones read in smaller pieces.
                    busy = sum(1 for q in ready if q in self._busy) or 1
                    per_queue = max(1, min(self.s.read_batch, pool.credits) // busy)
                    found = await self._take(ready, per_queue)
                if not found:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(wake.wait(), 0.5)
                    continue
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                metrics.REDIS_UP.set(0)
                log.warning("pool %s: Redis error %s; retrying in %.1fs", name, type(exc).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:
                log.exception("pool %s: dispatch loop error", name)
                await asyncio.sleep(0.5)

    async def _take(self, ready: list[QueueName], per_queue: int) -> int:
        """Read up to `per_queue` entries from each ready queue and start them. A limited key's
        entries are read only once its leases are held: until then they stay in the stream (so
        queue depth is exact and this gateway holds nothing it can't start)."""
        plain = [q for q in ready if not self.routing.is_leased_key(q.key_id)]
        limited = [q for q in ready if self.routing.is_leased_key(q.key_id)]
        entries = await self.queues.read(plain, per_queue) if plain else []
        leased: list[tuple[Entry, object]] = []
        lags: dict[QueueName, int] = {}
        if limited:
            lags = await self.queues.lags(limited)
            for q in limited:
                want = min(per_queue, lags.get(q, 0))
                if want <= 0:
                    continue
                leases = await self.leases.try_acquire(q.key_id, want)
                if not leases:
                    self._wait_for_leases(q, want)
                    continue
                leased += await self._read_leased(q, leases)
        self._busy = {QueueName.parse(e.queue) for e in entries} | {q for q in limited if lags.get(q, 0) > 0}
        await self._admit(entries, leased)
        return len(entries) + len(leased)

    async def _read_leased(self, q: QueueName, leases: list) -> list[tuple[Entry, object]]:
        """Entries for leases already held; leases left over (another gateway was faster) go back."""
        entries = await self.queues.read([q], len(leases))
        if len(entries) < len(leases):
            await self.leases.release(leases[len(entries):])
        return list(zip(entries, leases))

    def _wait_for_leases(self, queue: QueueName, want: int) -> None:
        """Wait in the key's FIFO line (a ticket in Redis) without holding up other keys."""
        self._blocked.add(queue)

        async def wait() -> None:
            try:
                leases = await self.leases.acquire(queue.key_id, want)
                await self._admit([], await self._read_leased(queue, leases))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("waiting for a lease on %s failed", queue.key_id)
                await asyncio.sleep(0.5)
            finally:
                self._blocked.discard(queue)
                self.wake(queue.pool)

        t = asyncio.create_task(wait(), name=f"lease-wait-{queue.key_id}")
        self._waiters.add(t)
        t.add_done_callback(self._waiters.discard)

    async def _admit(self, entries: list[Entry], leased: list[tuple[Entry, object]]) -> None:
        """Start what was read: drop entries whose task is over, send the rest to workers."""
        now = time.monotonic()
        attempts: list[Attempt] = []
        dead: list[Entry] = []
        spare = []
        for e, lease in [(e, None) for e in entries] + leased:
            try:
                a = self._attempt(e)
            except Exception:
                log.exception("undecodable queue entry %s in %s", e.entry_id, e.queue)
                dead.append(e)
                if lease is not None:
                    spare.append(lease)
                continue
            if lease is not None:
                a.lease, a.leased_at = lease, now
                a.read_at = getattr(lease, "requested_at", now)
            attempts.append(a)
        live = await self.batches.start_many([(a.entry.batch_id, a.entry.index, a.entry.attempt) for a in attempts])
        runnable = [a for a, ok in zip(attempts, live) if ok]
        for a, ok in zip(attempts, live):
            if not ok:
                dead.append(a.entry)
                if a.lease is not None:
                    spare.append(a.lease)
        if spare:
            await self.leases.release(spare)
        await self.queues.ack(dead)
        allowed = await self.budget.spend([a.key_id for a in runnable])
        for a, ok in zip(runnable, allowed):
            if not ok:
                await self._finish_failed([a], RateLimited(
                    f"the daily budget of {self.budget.limit_for(a.key_id)} predictions for key "
                    f"{self.routing.alias(a.key_id)} is spent; it resets at 00:00 UTC", retryable=False))
        runnable = [a for a, ok in zip(runnable, allowed) if ok]
        for a in runnable:
            self.inflight[a.attempt_id] = a
        await self._assign(runnable)

    def _attempt(self, e: Entry) -> Attempt:
        task = pb.Task.FromString(e.task)
        pool = "enhance" if task.HasField("enhance") or e.stage == "enhance" else "generate"
        provider = self.routing.provider_at(task, e.provider_index) if pool == "generate" else ""
        queue = QueueName.parse(e.queue)
        return Attempt(entry=e, task=task, pool=pool, provider=provider, key_id=queue.key_id)

    # -- sending ---------------------------------------------------------------------------------
    async def _assign(self, attempts: list[Attempt]) -> None:
        pending = deque(attempts)
        while pending:
            a = pending.popleft()
            pool = self.pools[a.pool]
            worker = pool.take()
            while worker is None:
                await pool.wait_for_credit(timeout=1.0)
                worker = pool.take()
            if a.attempt_id not in self.inflight:  # cancelled while it waited
                pool.grant(worker, 1)
                await self._release([a])
                await self.queues.ack([a.entry])
                continue
            try:
                assignment = await self._assignment(a)
            except TaskFailure as exc:
                pool.grant(worker, 1)
                await self._finish_failed([a], exc)
                continue
            if pool.workers.get(worker.worker_id) is not worker:
                # The worker left while the assignment was being built: give it to another.
                pending.append(a)
                continue
            a.worker = worker
            worker.in_flight.add(a.attempt_id)
            worker.outbox.put_assignment(assignment)
            if a.raced and self.routing.next_provider(a.task, a.entry.provider_index, probe=False) is not None:
                asyncio.get_running_loop().call_later(self.s.hedge_delay, self._hedge, a)
            if a.lease is not None:
                metrics.LEASE_WAIT.labels(self.routing.metric_label(a.key_id)).observe(a.leased_at - a.read_at)
        for pool in self.pools.values():
            pool.export()

    async def _assignment(self, a: Attempt) -> wpb.Assignment:
        token = await self._token(a.entry.batch_id, a.provider) if a.provider else None
        budget = self.s.max_job_runtime
        if a.lease is not None:
            # Never dispatch work that could outlive the lease's hard limit.
            budget = min(budget, max(0.0, a.lease.deadline - time.monotonic() + self.s.max_job_runtime - self.s.lease_ttl))
        msg = wpb.Assignment(
            attempt_id=a.attempt_id, task_id=task_id(a.entry.batch_id, a.entry.index),
            attempt=a.entry.attempt, fence=getattr(a.lease, "fence", 0), budget_ms=int(budget * 1000),
            output_filename=a.task.output_filename, provider=a.provider, token=token or "")
        if a.entry.stage == "enhance":
            msg.enhance.CopyFrom(a.task.then_enhance)
            msg.inputs.extend(pb.TaskResult.FromString(a.entry.carry).files)
        elif a.pool == "enhance":
            msg.enhance.CopyFrom(a.task.enhance)
        else:
            msg.generate.CopyFrom(a.task.generate)
        if self.outputs:
            await self.outputs.prepare(msg, a.entry.batch_id, a.entry.index, a.entry.attempt, a.task)
        return msg

    async def _token(self, batch_id: str, provider: str) -> str | None:
        sealed = self._tokens.get(batch_id)
        if sealed is None:
            sealed = await self.batches.sealed_tokens(batch_id)
            self._tokens[batch_id] = sealed
            while len(self._tokens) > 1024:
                self._tokens.popitem(last=False)
        if provider in sealed:
            try:
                return self.sealer.unseal(sealed[provider])
            except ValueError as exc:
                raise TaskFailure(str(exc)) from None
        return self.routing.server_token(provider)

    # -- results ---------------------------------------------------------------------------------
    async def on_results(self, worker: Worker, results: list[wpb.AttemptResult]) -> None:
        done: list[tuple[Attempt, wpb.AttemptResult]] = []
        for r in results:
            a = self.inflight.get(r.attempt_id)
            worker.in_flight.discard(r.attempt_id)
            if a is None or a.worker is not worker:
                continue  # stale: the attempt was re-queued or claimed meanwhile
            del self.inflight[r.attempt_id]
            done.append((a, r))
        if not done:
            return
        if self.outputs:
            await self.outputs.accept([(a.entry.batch_id, a.entry.index, a.entry.attempt, r) for a, r in done])
        await self._release([a for a, _ in done])
        finals: list[tuple[Attempt, pb.TaskResult]] = []
        retry: list[Requeue] = []
        for a, r in done:
            if a.provider:
                self.routing.record(a.provider, r)
            if r.state == pb.CANCELLED and a.cancel_reason in ("lease_lost", "drain"):
                retry.append(Requeue(a, a.cancel_reason))
                continue
            if r.state == pb.FAILED and a.raced:
                live = await self.batches.retire(a.entry.batch_id, a.entry.index, a.entry.attempt)
                if live != 0:
                    continue  # another attempt of the race still runs (or the task is over)
            if r.state == pb.FAILED and r.fallback_ok and a.pool == "generate":
                nxt = self.routing.next_provider(a.task, a.entry.provider_index)
                if nxt is not None:
                    retry.append(Requeue(a, "fallback", provider_index=nxt))
                    continue
            if r.state == pb.SUCCEEDED and a.pool == "generate" and a.task.HasField("then_enhance"):
                # The generated outputs go through the enhance pool before the task's result.
                carry = self._task_result(a, r).SerializeToString()
                retry.append(Requeue(a, "then_enhance", stage="enhance", carry=carry, counts=False))
                continue
            result = self._task_result(a, r)
            if a.entry.stage == "enhance":
                stage1 = pb.TaskResult.FromString(a.entry.carry)
                result.provider = stage1.provider
                result.model = f"{stage1.model}+{r.model}" if stage1.model else r.model
            finals.append((a, result))
        won = await self._record(finals)
        for (a, result), first in zip(finals, won):
            if first and a.raced and result.state == pb.SUCCEEDED:
                # The race is won: every other attempt of this task, on any gateway, stops.
                await self.r.publish(self.cancel_channel, "t:" + result.task_id)
        await self._requeue(retry)
        self.pools[worker.pool].export()

    def _task_result(self, a: Attempt, r: wpb.AttemptResult) -> pb.TaskResult:
        now_ms = int(time.time() * 1000)
        queued_ms = max(0, int((a.read_at - time.monotonic()) * 1000) + now_ms - a.entry.enqueued_ms)
        lease_wait = int((a.leased_at - a.read_at) * 1000) if a.lease is not None else 0
        result = pb.TaskResult(
            task_index=a.entry.index, task_id=task_id(a.entry.batch_id, a.entry.index),
            output_filename=a.task.output_filename, state=r.state, provider=r.provider or a.provider,
            attempts=a.entry.attempt, labels=dict(a.task.labels), model=r.model, device=r.device,
            timings=pb.Timings(queued_ms=queued_ms, lease_wait_ms=lease_wait, run_ms=r.run_ms,
                               total_ms=max(0, now_ms - a.entry.accepted_ms)))
        result.files.extend(r.files)
        if r.HasField("error"):
            result.error.CopyFrom(r.error)
        return result

    async def _record(self, finals: list[tuple[Attempt, pb.TaskResult]]) -> list[bool]:
        if not finals:
            return []
        won = await self.batches.finish_many([(a.entry.batch_id, a.entry.index, str(a.entry.attempt), res)
                                              for a, res in finals])
        for (a, res), first in zip(finals, won):
            if first and a.entry.dedup:
                await self._serve_followers(a, res)
        await self.queues.ack([a.entry for a, _ in finals])
        for a, res in finals:
            outcome = pb.TaskState.Name(res.state).lower()
            metrics.TASKS_FINISHED.labels(a.pool, outcome).inc()
            metrics.TASK_DURATION.labels(a.pool).observe(res.timings.total_ms / 1000)
        return won

    async def _serve_followers(self, leader: Attempt, result: pb.TaskResult) -> None:
        """Copy the leader's result to the identical tasks that waited for it; if the leader was
        cancelled (its batch was), they run on their own instead."""
        followers = await self.dedup.finish(leader.entry.dedup, result.task_id, result)
        if not followers:
            return
        if result.state == pb.CANCELLED:
            pushes = []
            for f in followers:
                fields = {k: v for k, v in f.entry.items() if k != "d"}
                fields["s"] = base64.b64decode(f.entry["s"])
                queue = QueueName.parse(f.queue)
                pushes.append((queue, fields))
                self.note_queue(queue)
            await self.queues.push(pushes)
            return
        await self.batches.finish_many([(f.batch_id, f.index, "*", f.copy(result)) for f in followers])

    async def _finish_failed(self, attempts: list[Attempt], failure: TaskFailure) -> None:
        for a in attempts:
            self.inflight.pop(a.attempt_id, None)
        await self._release(attempts)
        finals = []
        for a in attempts:
            r = wpb.AttemptResult(state=pb.FAILED, provider=a.provider,
                                  error=pb.TaskError(code=failure.code, message=failure.message,
                                                     retryable=failure.retryable))
            finals.append((a, self._task_result(a, r)))
        await self._record(finals)

    async def _requeue(self, items: list[Requeue]) -> None:
        """Put attempts back as attempt + 1, or fail them for good once `max_attempts` is
        reached (stage changes do not count against it)."""
        if not items:
            return
        over = [q for q in items if q.counts and q.attempt.entry.attempt >= self.s.max_attempts]
        again = [q for q in items if q not in over]
        for q in over:
            a = q.attempt
            if q.reason == "worker_lost":
                failure: TaskFailure = WorkerLost(
                    f"the task's worker was lost {a.entry.attempt} times (limit: max_attempts={self.s.max_attempts})")
            else:
                failure = TaskFailure(f"gave up after {a.entry.attempt} attempts (last: {q.reason})", retryable=True)
            await self._finish_failed([a], failure)
        numbers = await self.batches.next_attempts(
            [(q.attempt.entry.batch_id, q.attempt.entry.index, q.attempt.entry.attempt, False) for q in again])
        pushes = []
        for q, n in zip(again, numbers):
            a = q.attempt
            metrics.ATTEMPTS_REQUEUED.labels(a.pool, q.reason).inc()
            if n == 0:
                continue
            p = a.entry.provider_index if q.provider_index is None else q.provider_index
            stage = a.entry.stage if q.stage is None else q.stage
            carry = a.entry.carry if q.carry is None else q.carry
            if stage == "enhance":
                queue = QueueName("enhance", ENHANCE_KEY)
            else:
                queue = await self.routing.queue_for(a.task, p, a.entry.batch_id, self._token)
            fields = {"b": a.entry.batch_id, "i": a.entry.index, "a": n, "p": p,
                      "t": a.entry.accepted_ms, "s": a.entry.task}
            if stage:
                fields.update(g=stage, c=carry)
            if a.entry.dedup:
                fields["d"] = a.entry.dedup
            pushes.append((queue, fields))
            self.note_queue(queue)
        await self.queues.push(pushes)
        await self.queues.ack([q.attempt.entry for q in again])

    async def _release(self, attempts: list[Attempt]) -> None:
        leases = [a.lease for a in attempts if a.lease is not None]
        for a in attempts:
            a.lease = None
        if leases:
            await self.leases.release(leases)

    # -- workers coming and going ------------------------------------------------------------------
    async def on_worker_lost(self, worker: Worker) -> None:
        """The stream ended without a drain: its attempts run nowhere we can see. Their leases
        are left to expire into zombies (the provider jobs may still run) and the tasks go back
        to their queues as attempt + 1."""
        lost = [self.inflight.pop(aid) for aid in list(worker.in_flight) if aid in self.inflight]
        worker.in_flight.clear()
        for a in lost:
            a.lease = None  # not released: counted until the job is known over (see leases)
        if lost:
            log.warning("worker %s lost with %d attempts in flight; re-queueing them", worker.worker_id, len(lost))
        await self._requeue([Requeue(a, "worker_lost") for a in lost])

    async def on_returned(self, worker: Worker, attempt_ids: list[str]) -> None:
        """A draining worker gave these back unstarted or cancelled: run them elsewhere."""
        back = []
        for aid in attempt_ids:
            a = self.inflight.get(aid)
            worker.in_flight.discard(aid)
            if a is not None and a.worker is worker:
                del self.inflight[aid]
                back.append(a)
        await self._release(back)
        await self._requeue([Requeue(a, "drain", counts=False) for a in back])

    async def announce_cancel(self, batch_id: str) -> None:
        """Tell every gateway (this one included) to stop the batch's running attempts."""
        await self.r.publish(self.cancel_channel, "b:" + batch_id)

    def on_cancel_message(self, message: str) -> None:
        """`b:<batch>`: a cancelled batch; `t:<task>`: a raced task someone won. Running attempts
        here are cancelled at their workers; their results, when they come, are stale."""
        kind, _, ident = message.partition(":")
        for a in list(self.inflight.values()):
            if kind == "b" and a.entry.batch_id == ident:
                self._cancel(a, "batch_cancelled")
            elif kind == "t" and task_id(a.entry.batch_id, a.entry.index) == ident:
                self._cancel(a, "race_lost")

    def _hedge(self, a: Attempt) -> None:
        if a.attempt_id in self.inflight and not a.hedged:
            a.hedged = True
            t = asyncio.create_task(self._start_hedge(a))
            self._waiters.add(t)
            t.add_done_callback(self._waiters.discard)

    async def _start_hedge(self, a: Attempt) -> None:
        """The raced attempt is still running after the hedge delay: start the next provider
        too, as a second live attempt (the first one stays live)."""
        nxt = self.routing.next_provider(a.task, a.entry.provider_index)
        if nxt is None:
            return
        try:
            n, = await self.batches.next_attempts([(a.entry.batch_id, a.entry.index, a.entry.attempt, True)])
            if n == 0:
                return
            queue = await self.routing.queue_for(a.task, nxt, a.entry.batch_id, self._token)
            fields = {"b": a.entry.batch_id, "i": a.entry.index, "a": n, "p": nxt,
                      "t": a.entry.accepted_ms, "s": a.entry.task}
            if a.entry.dedup:
                fields["d"] = a.entry.dedup
            await self.queues.push([(queue, fields)])
            self.note_queue(queue)
            metrics.ATTEMPTS_REQUEUED.labels(a.pool, "hedge").inc()
        except RedisError as exc:
            log.warning("could not start the hedge of %s: %s", a.attempt_id, type(exc).__name__)

    def _cancel(self, a: Attempt, reason: str) -> None:
        a.cancel_reason = reason
        if a.worker is not None:
            a.worker.outbox.put_cancel(a.attempt_id)
        else:
            self.inflight.pop(a.attempt_id, None)

    # -- periodic work ----------------------------------------------------------------------------
    async def _renew_loop(self) -> None:
        """Renew the leases of attempts in flight on live worker streams, once per tick and in
        one round trip; touch their queue entries so no other gateway claims them."""
        tick = max(0.05, self.s.lease_ttl / 3)
        while True:
            await asyncio.sleep(tick)
            try:
                held = list(self.inflight.values())
                leased = {a.lease.lease_id: a for a in held if a.lease is not None}
                if leased:
                    renewed, lost = await self.leases.renew([a.lease for a in leased.values()])
                    for lease in renewed:  # new local deadlines: the watchdog goes by these
                        a = leased.get(lease.lease_id)
                        if a is not None and a.lease is not None:
                            a.lease = lease
                    for lease in lost:
                        a = leased.get(lease.lease_id)
                        if a is not None and a.attempt_id in self.inflight:
                            metrics.LEASES_LOST.inc()
                            a.lease = None
                            self._cancel(a, "lease_lost")
                await self.queues.touch([a.entry for a in held])
                metrics.REDIS_UP.set(1)
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                metrics.REDIS_UP.set(0)
                log.warning("renewal failed: %s", type(exc).__name__)
                self._watchdog()
            except Exception:
                log.exception("renewal loop error")

    def _watchdog(self) -> None:
        """Renewals fail: cancel work whose lease's local deadline has passed, whatever Redis
        says later (the lease may be granted to someone else by then)."""
        now = time.monotonic()
        for a in list(self.inflight.values()):
            if a.lease is not None and a.lease.deadline <= now:
                metrics.LEASES_LOST.inc()
                a.lease = None
                self._cancel(a, "lease_lost")

    async def _housekeeping_loop(self) -> None:
        """Discover queues other gateways created, claim entries of dead gateways, export gauges."""
        claim_idle_ms = int(max(self.s.lease_ttl * 3, 3.0) * 1000)
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.refresh_queues()
                for name in POOLS:
                    for q in list(self._known_queues[name]):
                        claimed = await self.queues.claim(q, claim_idle_ms)
                        claimed = [e for e in claimed if f"{task_id(e.batch_id, e.index)}#{e.attempt}" not in self.inflight]
                        if claimed:
                            log.warning("claimed %d entries of a dead gateway from %s", len(claimed), q.key_id)
                            await self._requeue([Requeue(self._attempt(e), "gateway_lost") for e in claimed])
                await self._export_backlog()
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                metrics.REDIS_UP.set(0)
                log.warning("housekeeping: Redis error %s", type(exc).__name__)
            except Exception:
                log.exception("housekeeping error")

    async def _export_backlog(self) -> None:
        await self._export_keys()
        for name in POOLS:
            queues = sorted(self._known_queues[name], key=lambda q: q.key_id)
            depths = await self.queues.depth(queues)
            total = sum(d for d, _ in depths.values())
            oldest = max((age for _, age in depths.values()), default=0.0)
            schedulable = 0
            for q, (depth, _) in depths.items():
                if depth == 0:
                    continue
                free = await self.routing.free_slots(q.key_id, self.leases)
                schedulable += depth if free is None else min(depth, free)
            metrics.QUEUE_DEPTH.labels(name).set(total)
            metrics.QUEUE_OLDEST_AGE.labels(name).set(oldest)
            metrics.SCHEDULABLE_BACKLOG.labels(name).set(schedulable)

    async def _export_keys(self) -> None:
        """Per-key lease gauges (bounded labels: see Routing.metric_label)."""
        keys = sorted({q.key_id for q in self._known_queues["generate"] if self.routing.is_leased_key(q.key_id)})
        for key_id in keys:
            label = self.routing.metric_label(key_id)
            if label == "other":
                continue
            state = await self.leases.state(key_id)
            metrics.LEASE_IN_USE.labels(label).set(state.in_use)
            metrics.LEASE_LIMIT.labels(label).set(state.limit)
            metrics.LEASE_WAITERS.labels(label).set(state.waiting)
            metrics.LEASE_QUARANTINED.labels(label).set(1 if state.quarantined else 0)

    # -- drain -----------------------------------------------------------------------------------
    async def drain(self, grace: float) -> None:
        """Stop reading, let in-flight attempts finish within `grace`, hand back the rest."""
        self.accepting = False
        for w in [w for p in self.pools.values() for w in p.workers.values()]:
            w.outbox.put_goaway()
        deadline = time.monotonic() + grace
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = list(self.inflight.values())
        for a in left:
            self.inflight.pop(a.attempt_id, None)
            if a.worker is not None:
                a.worker.outbox.put_cancel(a.attempt_id)
                a.worker.in_flight.discard(a.attempt_id)
        await self._release(left)
        await self._requeue([Requeue(a, "drain", counts=False) for a in left])
