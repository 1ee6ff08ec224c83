"""The feed: moves queue entries into this gateway as HELD attempts, as far as the pool's
workers have credits for, and hands them to the assigner.

For each pool, one loop takes work from every queue whose key is not waiting for a lease:

    limited key:  leases for n slots ─▶ read n entries ─┐
                     │ none free: one waiter per key     │
                     ▼ takes a FIFO ticket; that queue   ├─▶ START (one entry per attempt, task
                       is not read until it is served    │    not final) ─▶ HELD ─▶ assigner
    other queues: read n entries ───────────────────────┘          │ no
                                                                   ▼ Drop (ack, lease released)

A saturated key's entries stay in its stream while other keys' queues go on being read: no
head-of-line blocking, and the queue depth in Redis is exact.

What can go wrong: a Redis error after entries were read but before START answered leaves
them pending in this gateway's group; they are kept (`unstarted`, touched by the upkeep) and
START is asked again on the next turn (START is idempotent for the same entry), so nothing waits
for the claim threshold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.exceptions import RedisError

from imagemesh import metrics
from imagemesh.leases import Lease
from imagemesh.v1 import imagemesh_pb2 as pb

from .attempts import Attempt, Drop, Pool
from .attempts import Decision, LeaseFate, Phase
from .batches import BatchStore
from .entries import QueueEntry
from .inflight import InFlight
from .pools import Pool as WorkerPool
from .queues import QueueName, TaskQueues
from .routing import Routing

log = logging.getLogger("imagemesh.gateway.feed")


class Feed:
    def __init__(self, *, queues: TaskQueues, batches: BatchStore, leases, routing: Routing,
                 inflight: InFlight, pools: dict[str, WorkerPool], read_batch: int,
                 assign, settle) -> None:
        self.queues = queues
        self.batches = batches
        self.leases = leases
        self.routing = routing
        self.inflight = inflight
        self.pools = pools
        self.read_batch = read_batch
        self._assign = assign      # async (pool) -> None: gateway.assign.Assigner.assign
        self._settle = settle      # async (attempts) -> None
        self.accepting = True
        self.known: dict[Pool, set[QueueName]] = {p: set() for p in Pool}
        self._blocked: set[QueueName] = set()
        self._busy: set[QueueName] = set()   # queues that had entries at the last read
        self._wake = {p: asyncio.Event() for p in Pool}
        self._unstarted: dict[Pool, list[Attempt]] = {p: [] for p in Pool}
        self._waiters: set[asyncio.Task] = set()

    # -- queues ------------------------------------------------------------------------------
    def wake(self, pool: str | None = None) -> None:
        for p in Pool:
            if pool is None or pool == p.value:
                self._wake[p].set()

    def note_queue(self, q: QueueName) -> None:
        self.known[Pool(q.pool)].add(q)
        self.wake(q.pool)

    async def refresh_queues(self) -> None:
        for q in await self.queues.names():
            if q.pool in {p.value for p in Pool} and q not in self.known[Pool(q.pool)]:
                self.note_queue(q)

    def unstarted(self) -> list[Attempt]:
        return [a for line in self._unstarted.values() for a in line]

    # -- the loop ----------------------------------------------------------------------------
    async def run(self, pool: Pool) -> None:
        workers = self.pools[pool.value]
        wake = self._wake[pool]
        backoff = 0.05
        while True:
            try:
                if not self.accepting:
                    await asyncio.sleep(0.1)
                    continue
                if not await workers.wait_for_credit(timeout=1.0):
                    continue
                await self._start_unstarted(pool)
                await self._assign(pool)
                room = workers.credits - self.inflight.held(pool)
                if room <= 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(wake.wait(), 0.05)
                    wake.clear()
                    continue
                wake.clear()
                ready = [q for q in self.known[pool] if q not in self._blocked]
                found = 0
                if ready:
                    # Share the credits among the queues that had work last time: an idle
                    # queue reads nothing whatever its share, and counting it would only make
                    # the busy ones read in smaller pieces.
                    busy = sum(1 for q in ready if q in self._busy) or 1
                    per_queue = max(1, min(self.read_batch, room) // busy)
                    found = await self._take(ready, per_queue)
                    await self._assign(pool)
                if not found:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(wake.wait(), 0.5)
                    continue
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                metrics.REDIS_UP.set(0)
                log.warning("pool %s: Redis error %s; retrying in %.2fs", pool.value, type(exc).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:
                log.exception("pool %s: feed loop error", pool.value)
                await asyncio.sleep(0.5)

    async def _take(self, ready: list[QueueName], per_queue: int) -> int:
        """Read up to `per_queue` entries from each ready queue and start them. A limited key's
        entries are read only once its leases are held: until then they stay in the stream (so
        queue depth is exact and this gateway holds nothing it can't start)."""
        plain = [q for q in ready if not self.routing.is_leased_key(q.key_id)]
        limited = [q for q in ready if self.routing.is_leased_key(q.key_id)]
        read: list[tuple[QueueEntry, Lease | None]] = []
        if plain:
            read += [(e, None) for e in await self.queues.read(plain, per_queue)]
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
                read += await self._read_leased(q, leases)
        self._busy = {QueueName.parse(e.queue) for e, lease in read if lease is None} | \
                     {q for q in limited if lags.get(q, 0) > 0}
        await self._admit(read)
        return len(read)

    async def _read_leased(self, q: QueueName, leases: list[Lease]) -> list[tuple[QueueEntry, Lease | None]]:
        """Entries for leases already held; leases left over (another gateway was faster) go back."""
        try:
            entries = await self.queues.read([q], len(leases))
        except BaseException:
            await _release_quietly(self.leases, leases)
            raise
        if len(entries) < len(leases):
            await self.leases.release(leases[len(entries):])
        return list(zip(entries, leases))

    def _wait_for_leases(self, queue: QueueName, want: int) -> None:
        """Wait in the key's FIFO line (a ticket in Redis) without holding up other keys."""
        self._blocked.add(queue)

        async def wait() -> None:
            try:
                leases = await self.leases.acquire(queue.key_id, want)
                await self._admit(await self._read_leased(queue, leases))
                await self._assign(Pool(queue.pool))
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                log.warning("waiting for a lease on %s: Redis error %s", queue.key_id, type(exc).__name__)
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("waiting for a lease on %s failed", queue.key_id)
                await asyncio.sleep(0.5)
            finally:
                self._blocked.discard(queue)
                self.wake(queue.pool)

        t = asyncio.create_task(wait(), name=f"lease-wait-{queue.key_id}")
        self._waiters.add(t)
        t.add_done_callback(self._waiters.discard)

    # -- starting ------------------------------------------------------------------------------
    def attempt_for(self, e: QueueEntry, lease: Lease | None) -> Attempt:
        """The attempt an entry stands for. Raises for an entry whose task does not decode."""
        task = pb.Task.FromString(e.task)
        pool = Pool.ENHANCE if task.HasField("enhance") or e.stage == "enhance" else Pool.GENERATE
        provider = self.routing.provider_at(task, e.provider_index) if pool is Pool.GENERATE else ""
        a = Attempt(entry=e, task=task, pool=pool, provider=provider, key_id=QueueName.parse(e.queue).key_id)
        if lease is not None:
            a.lease, a.leased_at = lease, time.monotonic()
            a.read_at = lease.requested_at or a.leased_at
        return a

    async def _admit(self, read: list[tuple[QueueEntry, Lease | None]]) -> None:
        """START what was read: runnable attempts are HELD; the others are dropped."""
        attempts = []
        for e, lease in read:
            try:
                attempts.append(self.attempt_for(e, lease))
            except Exception:
                log.exception("undecodable task in queue entry %s of %s; dropping it", e.entry_id, e.queue)
                a = Attempt(entry=e, task=pb.Task(), pool=Pool.GENERATE, provider="", key_id="", lease=lease)
                self.inflight.adopt(a, Decision(Phase.SETTLING, lease=LeaseFate.RELEASE, outcome=Drop("undecodable")))
                await self._settle([a])
        for a in attempts:
            self._unstarted[a.pool].append(a)
        for pool in {a.pool for a in attempts}:
            await self._start_unstarted(pool)

    async def _start_unstarted(self, pool: Pool) -> None:
        """START the pool's attempts whose answer is not known yet (asked again after an
        error: START answers the same for the same entry)."""
        todo = self._unstarted[pool]
        if not todo:
            return
        live = await self.batches.start_many(
            [(a.entry.batch_id, a.entry.index, a.entry.attempt, a.entry.entry_id) for a in todo])
        self._unstarted[pool] = []
        dropped, duplicates = [], []
        for a, ok in zip(todo, live):
            if a.attempt_id in self.inflight:
                # Another entry of this attempt (left by a crash mid-requeue) runs it here.
                duplicates.append(a)
            elif ok:
                self.inflight.hold(a)
            else:
                self.inflight.adopt(a, Decision(Phase.SETTLING, lease=LeaseFate.RELEASE, outcome=Drop("not startable")))
                dropped.append(a)
        if dropped:
            await self._settle(dropped)
        if duplicates:
            await self._discard(duplicates)

    async def _discard(self, duplicates: list[Attempt]) -> None:
        """Duplicate entries of attempts running here: release their leases, ack them. If that
        fails the entries stay pending; whoever claims them finds them stale (NEXT checks which
        entry started the attempt) and drops them."""
        try:
            await self.leases.release([a.lease for a in duplicates if a.lease is not None])
            await self.queues.ack([a.entry for a in duplicates])
        except RedisError as exc:
            log.warning("could not drop %d duplicate entries (%s); the claim path will", len(duplicates),
                        type(exc).__name__)


async def _release_quietly(leases, held: list[Lease]) -> None:
    with contextlib.suppress(Exception):
        await leases.release(held)
