"""The feed: moves queue entries into this gateway as HELD attempts, as far as the pool's
workers have credits for, and hands them to the assigner.

For each pool, one loop takes work from every key that is not waiting for a lease. Each turn:
the lag of every flow (a tenant's queue of one priority class under one key: gateway.queues),
the pool's room (credits) shared between the keys with work, each key's share split between
its flows by deficit round robin (gateway.fairness), then the entries read in one round trip:

    limited key:  leases for n slots ─▶ n split fairly ─▶ read ─┐
                     │ none free: one waiter per key             │
                     ▼ takes a FIFO ticket; the key's flows      ├─▶ START (one entry per attempt,
                       are not read until it is served           │    task not final) ─▶ HELD
    other keys:   room split fairly between flows ─▶ read ──────┘          │ no      ─▶ assigner
                                                                           ▼ Drop (ack, lease released)

A saturated key's entries stay in its streams while other keys' queues go on being read: no
head-of-line blocking, and the queue depth in Redis is exact. A tenant's single task is read
within one turn of the key, whatever another tenant has queued there.

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

from .attempts import Attempt, Decision, Drop, LeaseFate, Phase, Pool
from .batches import BatchStore
from .entries import QueueEntry
from .fairness import FairShare
from .inflight import InFlight
from .pools import Pool as WorkerPool
from .queues import QueueName, TaskQueues
from .routing import Routing

log = logging.getLogger("imagemesh.gateway.feed")


class Feed:
    def __init__(self, *, queues: TaskQueues, batches: BatchStore, leases, routing: Routing,
                 inflight: InFlight, pools: dict[str, WorkerPool], read_batch: int,
                 assign, settle, fair: FairShare | None = None) -> None:
        self.queues = queues
        self.batches = batches
        self.leases = leases
        self.routing = routing
        self.inflight = inflight
        self.pools = pools
        self.read_batch = read_batch
        self._assign = assign      # async (pool) -> None: gateway.assign.Assigner.assign
        self._settle = settle      # async (attempts) -> None
        self.fair = fair or FairShare()
        self.accepting = True
        self.known: dict[Pool, set[QueueName]] = {p: set() for p in Pool}
        self._blocked: set[str] = set()      # keys waiting in their FIFO line for a lease
        self._lag_hint: dict[str, int] = {}  # key -> entries waiting at the last look
        self._key_turn: dict[Pool, int] = {p: 0 for p in Pool}
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
        """The flows that exist now (the registry is the truth: collected ones are dropped)."""
        names = await self.queues.names()
        for p in Pool:
            now = {q for q in names if q.pool == p.value}
            gone = self.known[p] - now
            if gone:
                self.fair.forget(list(gone))
            if now - self.known[p]:
                self.wake(p.value)
            self.known[p] = now

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
                found = await self._take(pool, min(self.read_batch, room))
                if found:
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

    async def _take(self, pool: Pool, room: int) -> int:
        """Read up to `room` entries of the pool, shared fairly, and start them. A limited key's
        entries are read only once its leases are held: until then they stay in the streams (so
        queue depth is exact and this gateway holds nothing it can't start)."""
        ready = [q for q in self.known[pool] if q.key_id not in self._blocked]
        if not ready:
            return 0
        lags = await self.queues.lags(ready)
        by_key: dict[str, dict[QueueName, int]] = {}
        for q, n in lags.items():
            if n > 0:
                by_key.setdefault(q.key_id, {})[q] = n
        self._lag_hint = {k: sum(v.values()) for k, v in by_key.items()}
        plan: dict[QueueName, int] = {}
        held: dict[str, list[Lease]] = {}
        for key_id, share in self._shares(pool, by_key, room):
            flows = by_key[key_id]
            want = min(share, sum(flows.values()))
            if not self.routing.is_leased_key(key_id):
                plan.update(self.fair.allocate(self.fair.flows(flows), want))
                continue
            leases = await self.leases.try_acquire(key_id, want)
            if not leases:
                self._wait_for_leases(pool, key_id, want)
                continue
            held[key_id] = leases
            plan.update(self.fair.allocate(self.fair.flows(flows), len(leases)))
        read = await self._read(plan, held)
        await self._admit(read)
        return len(read)

    def _shares(self, pool: Pool, by_key: dict[str, dict[QueueName, int]], room: int) -> list[tuple[str, int]]:
        """The room split evenly between the keys with work (the remainder goes round, turn by
        turn); a key whose share is 0 this turn waits for the next."""
        keys = sorted(by_key)
        if not keys or room <= 0:
            return []
        turn = self._key_turn[pool] % len(keys)
        keys = keys[turn:] + keys[:turn]
        self._key_turn[pool] += 1
        base, extra = divmod(room, len(keys))
        return [(k, base + (1 if i < extra else 0)) for i, k in enumerate(keys) if base or i < extra]

    async def _read(self, plan: dict[QueueName, int], held: dict[str, list[Lease]]) -> list[tuple[QueueEntry, Lease | None]]:
        """The planned entries, in one round trip; each of a limited key's entries gets one of
        the key's leases, and leases left over (another gateway read first) go back."""
        try:
            entries = await self.queues.read(plan)
        except BaseException:
            await _release_quietly(self.leases, [x for leases in held.values() for x in leases])
            raise
        spare = {k: list(v) for k, v in held.items()}
        read: list[tuple[QueueEntry, Lease | None]] = []
        for e in entries:
            key_id = QueueName.parse(e.queue).key_id
            if key_id in spare:
                read.append((e, spare[key_id].pop()))
            else:
                read.append((e, None))
        leftover = [x for leases in spare.values() for x in leases]
        if leftover:
            await self.leases.release(leftover)
        return read

    def reuse(self, leases: list[Lease]) -> list[Lease]:
        """Leases whose jobs just ended: those of keys with work waiting are handed straight to
        this gateway's next entries (LeaseBook.handover: unless another gateway's ticket waits
        for the key, with no release, wake-up and acquire in between), in the background; returns
        the others, to be released now."""
        if not self.accepting:
            return leases
        by_key: dict[str, list[Lease]] = {}
        for lease in leases:
            by_key.setdefault(lease.key_id, []).append(lease)
        rest: list[Lease] = []
        workers = self.pools[Pool.GENERATE.value]
        room = workers.credits - self.inflight.held(Pool.GENERATE)
        for key_id, group in by_key.items():
            take = min(len(group), room, self._lag_hint.get(key_id, 0))
            if take <= 0:
                rest += group
                continue
            room -= take
            self._lag_hint[key_id] -= take
            rest += group[take:]
            t = asyncio.create_task(self._hand_over(key_id, group[:take]), name=f"lease-reuse-{key_id}")
            self._waiters.add(t)
            t.add_done_callback(self._waiters.discard)
        return rest

    async def _hand_over(self, key_id: str, leases: list[Lease]) -> None:
        try:
            kept = await self.leases.handover(leases)
        except RedisError:
            await _release_quietly(self.leases, leases)  # unknown: release (ids already gone are ignored)
            return
        if not kept:
            return
        try:
            await self._start_under(Pool.GENERATE, key_id, kept)
        except RedisError as exc:
            log.warning("handing leases of %s on: Redis error %s", key_id, type(exc).__name__)

    async def _start_under(self, pool: Pool, key_id: str, leases: list[Lease]) -> None:
        """Read and start as many of the key's entries as `leases` allow, shared fairly between
        its flows, and assign them. The leases are released if the flows can't be looked at;
        once entries are read, each lease rides with its attempt (or `_read` releases it)."""
        flows = [q for q in self.known[pool] if q.key_id == key_id]
        try:
            lags = await self.queues.lags(flows)
        except BaseException:
            await _release_quietly(self.leases, leases)
            raise
        plan = self.fair.allocate(self.fair.flows(lags), len(leases))
        await self._admit(await self._read(plan, {key_id: leases}))
        await self._assign(pool)

    def _wait_for_leases(self, pool: Pool, key_id: str, want: int) -> None:
        """Wait in the key's FIFO line (a ticket in Redis) without holding up other keys."""
        self._blocked.add(key_id)

        async def wait() -> None:
            try:
                await self._start_under(pool, key_id, await self.leases.acquire(key_id, want))
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                log.warning("waiting for a lease on %s: Redis error %s", key_id, type(exc).__name__)
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("waiting for a lease on %s failed", key_id)
                await asyncio.sleep(0.5)
            finally:
                self._blocked.discard(key_id)
                self.wake(pool.value)

        t = asyncio.create_task(wait(), name=f"lease-wait-{key_id}")
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
        error: START answers the same for the same entry). Several tasks admit at once (this
        loop, lease waiters, hand-overs): each takes the attempts it starts out of the list
        before it awaits, so no attempt is started, or taken for a duplicate, twice."""
        todo, self._unstarted[pool] = self._unstarted[pool], []
        if not todo:
            return
        try:
            live = await self.batches.start_many(
                [(a.entry.batch_id, a.entry.index, a.entry.attempt, a.entry.entry_id) for a in todo])
        except BaseException:
            self._unstarted[pool] = todo + self._unstarted[pool]
            raise
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
