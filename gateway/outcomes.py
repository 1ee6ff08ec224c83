"""Writes decided outcomes to Redis: results recorded, attempts requeued, entries dropped.

`Outcomes.settle(attempts)` takes attempts in phase SETTLING (gateway.attempts) and carries out
each one's outcome, batched: one pipeline per step for all of them. Every step is idempotent or
fenced, and they run in an order that a crash or a Redis error between any two leaves
recoverable:

    Finish   FINISH (fenced) ─▶ followers served (dedup leaders) ─▶ entry acked
    Requeue  NEXT (same answer if asked again) ─▶ new entry pushed ─▶ old entry acked
    Drop     followers served (if the task is a final dedup leader) ─▶ entry acked

An attempt leaves `InFlight` only once its entry is acked. On a Redis error the attempts stay
SETTLING, their entries stay pending in this gateway's group (touched, so nobody claims them),
and `retry()` (called by gateway.upkeep every tick) does the whole outcome again; if this
gateway dies instead, the gateway that claims an entry requeues it, and NEXT, START and FINISH
make the repeat harmless (one new attempt, one entry that runs it, one result).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from imagemesh import metrics
from imagemesh.errors import TaskFailure
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import worker_pb2 as wpb

from .attempts import Attempt, Drop, Finish, Phase, Pool, Requeue, failed_result
from .batches import BatchStore
from .dedup import Dedup
from .entries import QueueEntry
from .inflight import InFlight
from .queues import QueueName, TaskQueues
from .routing import ENHANCE_KEY, Routing
from .tokens import BatchTokens

log = logging.getLogger("imagemesh.gateway.outcomes")


class Outcomes:
    def __init__(self, *, redis: aioredis.Redis, batches: BatchStore, queues: TaskQueues, leases,
                 routing: Routing, dedup: Dedup, tokens: BatchTokens, inflight: InFlight,
                 cancel_channel: str, note_queue: Callable[[QueueName], None],
                 reuse: Callable[[list], list] = lambda leases: leases) -> None:
        self.r = redis
        self.batches = batches
        self.queues = queues
        self.leases = leases
        self.routing = routing
        self.dedup = dedup
        self.tokens = tokens
        self.inflight = inflight
        self.cancel_channel = cancel_channel
        self.note_queue = note_queue
        self.reuse = reuse  # leases -> those to release now (the others go to work at once)
        self._busy: set[str] = set()  # attempt ids being settled right now

    # -- the entry points --------------------------------------------------------------------
    async def settle(self, attempts: list[Attempt]) -> bool:
        """Carry out the outcomes of these SETTLING attempts; True when all are done. A Redis
        error is logged and leaves the unfinished ones for `retry()`; never raises it."""
        mine = [a for a in attempts if a.phase is Phase.SETTLING and a.attempt_id not in self._busy
                and a.attempt_id in self.inflight]
        self._busy.update(a.attempt_id for a in mine)
        try:
            await self._release_due()
            await self._finish([a for a in mine if isinstance(a.outcome, Finish)])
            await self._requeue([a for a in mine if isinstance(a.outcome, Requeue)])
            await self._drop([a for a in mine if isinstance(a.outcome, Drop)])
            metrics.REDIS_UP.set(1)
            return True
        except RedisError as exc:
            metrics.REDIS_UP.set(0)
            log.warning("recording %d outcomes failed (%s: %s); retrying", len(mine), type(exc).__name__, exc)
            return False
        except Exception:
            log.exception("recording %d outcomes failed; retrying", len(mine))
            return False
        finally:
            self._busy.difference_update(a.attempt_id for a in mine)

    async def retry(self) -> None:
        """Settle what earlier calls left unfinished (and leases whose release failed)."""
        due = self.inflight.settling()
        if due or self.inflight.releases_due:
            await self.settle(due)

    async def _release_due(self) -> None:
        due, self.inflight.releases_due = self.inflight.releases_due, []
        if not due:
            return
        due = self.reuse(due)
        if not due:
            return
        try:
            await self.leases.release(due)
        except BaseException:
            self.inflight.releases_due.extend(due)
            raise

    # -- Finish --------------------------------------------------------------------------------
    async def _finish(self, attempts: list[Attempt]) -> None:
        if not attempts:
            return
        results = [self.task_result(a, a.outcome.result) for a in attempts]  # type: ignore[union-attr]
        won = await self.batches.finish_many(
            [(a.entry.batch_id, a.entry.index, str(a.entry.attempt), res, a.outcome.retire)  # type: ignore[union-attr]
             for a, res in zip(attempts, results)])
        for a, w in zip(attempts, won):
            if a.entry.dedup and w != 2:
                await self._serve_followers(a.entry)
        await self.queues.ack([a.entry for a in attempts])
        for a, res, w in zip(attempts, results, won):
            self.inflight.forget(a)
            if w == 1:
                metrics.TASKS_FINISHED.labels(a.pool.value, pb.TaskState.Name(res.state).lower()).inc()
                metrics.TASK_DURATION.labels(a.pool.value).observe(res.timings.total_ms / 1000)
                if a.raced and res.state == pb.SUCCEEDED:
                    # The race is won: every other attempt of this task, on any gateway, stops.
                    await self.r.publish(self.cancel_channel, "t:" + res.task_id)

    def task_result(self, a: Attempt, r: wpb.AttemptResult) -> pb.TaskResult:
        now_ms = int(time.time() * 1000)
        queued_ms = max(0, int((a.read_at - time.monotonic()) * 1000) + now_ms - a.entry.enqueued_ms)
        lease_wait = int((a.leased_at - a.read_at) * 1000) if a.leased_at else 0
        result = pb.TaskResult(
            task_index=a.entry.index, task_id=a.entry.task_id, output_filename=a.task.output_filename,
            state=r.state, provider=r.provider or a.provider, attempts=a.entry.attempt,
            labels=dict(a.task.labels), model=r.model, device=r.device,
            timings=pb.Timings(queued_ms=queued_ms, lease_wait_ms=lease_wait, run_ms=r.run_ms,
                               total_ms=max(0, now_ms - a.entry.accepted_ms)))
        result.files.extend(r.files)
        if r.HasField("error"):
            result.error.CopyFrom(r.error)
        if a.entry.stage == "enhance" and a.entry.carry:
            stage1 = pb.TaskResult.FromString(a.entry.carry)
            result.provider = stage1.provider
            result.model = f"{stage1.model}+{r.model}" if stage1.model else r.model
        return result

    # -- Requeue -------------------------------------------------------------------------------
    async def _requeue(self, attempts: list[Attempt]) -> None:
        if not attempts:
            return
        numbers = await self.batches.next_attempts(
            [(a.entry.batch_id, a.entry.index, a.entry.attempt, False, a.outcome.retire,  # type: ignore[union-attr]
              a.entry.entry_id) for a in attempts])
        pushes: list[tuple[QueueName, QueueEntry]] = []
        unroutable: list[tuple[Attempt, int, TaskFailure]] = []
        for a, n in zip(attempts, numbers):
            q: Requeue = a.outcome  # type: ignore[assignment]
            if n <= 0:
                continue  # stale (task final, or moved on by someone else) or retired
            entry = self._successor(a, q, n)
            try:
                queue = await self._queue_of(entry, a.task)
            except TaskFailure as failure:
                unroutable.append((a, n, failure))
                continue
            pushes.append((queue, entry))
        await self.queues.push(pushes)
        if unroutable:
            # NEXT made attempt n live; it can't be queued (its token can't be opened): n fails.
            await self.batches.finish_many(
                [(a.entry.batch_id, a.entry.index, str(n), self.task_result(a, failed_result(a, f)), False)
                 for a, n, f in unroutable])
        for a, n in zip(attempts, numbers):
            if n == 0 and a.entry.dedup:
                await self._serve_followers(a.entry)
        await self.queues.ack([a.entry for a in attempts])
        for queue, _ in pushes:
            self.note_queue(queue)
        for a in attempts:
            self.inflight.forget(a)
            metrics.ATTEMPTS_REQUEUED.labels(a.pool.value, a.outcome.reason.value).inc()  # type: ignore[union-attr]

    def _successor(self, a: Attempt, q: Requeue, n: int) -> QueueEntry:
        # The then_enhance step carries the generate step's result (its files are the inputs).
        carry = self.task_result(a, q.result).SerializeToString() if q.result is not None else None
        return a.entry.successor(n, provider_index=q.provider_index, stage=q.stage, carry=carry, counts=q.counts)

    async def _queue_of(self, entry: QueueEntry, task: pb.Task) -> QueueName:
        if entry.stage == "enhance" or task.HasField("enhance"):
            return QueueName(Pool.ENHANCE.value, ENHANCE_KEY, entry.tenant, entry.klass)
        provider = self.routing.provider_at(task, entry.provider_index)
        token = await self.tokens.token(entry.batch_id, provider) if self.routing.needs_token(provider) else None
        return QueueName(Pool.GENERATE.value, self.routing.key_id(provider, token), entry.tenant, entry.klass)

    # -- hedging --------------------------------------------------------------------------------
    async def hedge(self, a: Attempt) -> None:
        """A raced attempt still runs after the hedge delay: start the next provider too, as a
        second attempt (live once its entry starts, see NEXT). Best effort: on a Redis error the
        race simply runs with one attempt."""
        nxt = self.routing.next_provider(a.task, a.entry.provider_index)
        if nxt is None:
            return
        try:
            n, = await self.batches.next_attempts(
                [(a.entry.batch_id, a.entry.index, a.entry.attempt, True, False, a.entry.entry_id)])
            if n <= 0:
                return
            entry = a.entry.successor(n, provider_index=nxt, counts=False)
            queue = await self._queue_of(entry, a.task)
            await self.queues.push([(queue, entry)])
            self.note_queue(queue)
            metrics.ATTEMPTS_REQUEUED.labels(a.pool.value, "hedge").inc()
        except (RedisError, TaskFailure) as exc:
            log.warning("could not start the hedge of %s: %s", a.attempt_id, type(exc).__name__)

    # -- Drop ----------------------------------------------------------------------------------
    async def _drop(self, attempts: list[Attempt]) -> None:
        if not attempts:
            return
        for a in attempts:
            if a.entry.dedup:
                await self._serve_followers(a.entry)
        await self.queues.ack([a.entry for a in attempts])
        for a in attempts:
            self.inflight.forget(a)

    # -- deduplication followers -----------------------------------------------------------------
    async def _serve_followers(self, leader: QueueEntry) -> None:
        """If the leader's task is final, give its followers their copies (or, if it was
        cancelled, queue them to run on their own). Idempotent: see gateway.dedup."""
        result = await self.batches.final_result(leader.batch_id, leader.index)
        if result is None:
            return  # not final (a duplicate entry was dropped, the task goes on) or not a leader
        followers = await self.dedup.take(leader.dedup, leader.task_id, result)
        if followers:
            if result.state == pb.CANCELLED:
                pushes = [(QueueName.parse(f.queue), f.queue_entry()) for f in followers]
                await self.queues.push(pushes)
                for queue, _ in pushes:
                    self.note_queue(queue)
            else:
                await self.batches.finish_many([(f.batch_id, f.index, "*", f.copy(result), False) for f in followers])
        await self.dedup.clear(leader.dedup, leader.task_id)
