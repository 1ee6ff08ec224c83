"""Task queues in Redis: one stream per (pool, lease key), read by every gateway as one group.

    im:q:{<pool>|<key_id>}   stream   entries: b (batch), i (index), a (attempt), p (provider
                                      index), t (accepted ms), s (the Task, serialized), and for
                                      a generate task's then_enhance stage: g ("enhance") and
                                      c (the generate result it carries, serialized); d (the
                                      deduplication identity, when other tasks follow this one);
                                      tr (W3C trace context as JSON, when tracing is on)
    im:queues                set      every queue that ever had work, for gateways to discover
    im:work                  channel  a pool name, published when work was added to it

One stream per key is what keeps a saturated key from blocking anything else (invariant 3): a
gateway only reads from the queues of keys that are not waiting for a lease.

An entry stays pending in the group (owned by the gateway that read it) until the task's
attempt is over. A gateway touches its pending entries every tick (`touch`), so an entry idle
longer than the claim threshold belongs to a dead gateway and another one `claim`s it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

GROUP = "gw"
PUSH_CHUNK = 1000
WORK_CHANNEL_SUFFIX = "work"


@dataclass(frozen=True)
class Entry:
    """One queued attempt of one task."""

    queue: str
    entry_id: str
    batch_id: str
    index: int
    attempt: int
    provider_index: int
    accepted_ms: int
    task: bytes
    stage: str = ""
    carry: bytes = b""
    # Deduplication identity (gateway.dedup), when the task has followers to serve.
    dedup: str = ""
    # Trace context (imagemesh.tracing.entry_field), when tracing is on.
    trace: str = ""

    @property
    def enqueued_ms(self) -> int:
        return int(self.entry_id.split("-", 1)[0])


@dataclass(frozen=True)
class QueueName:
    pool: str
    key_id: str

    def redis_key(self, prefix: str) -> str:
        return f"{prefix}:q:{{{self.pool}|{self.key_id}}}"

    @staticmethod
    def parse(redis_key: str) -> "QueueName":
        inner = redis_key[redis_key.index("{") + 1: redis_key.rindex("}")]
        pool, _, key_id = inner.partition("|")
        return QueueName(pool, key_id)


class TaskQueues:
    def __init__(self, redis: aioredis.Redis, *, consumer: str, prefix: str = "im") -> None:
        self.r = redis
        self.prefix = prefix
        self.consumer = consumer
        self.registry = f"{prefix}:queues"
        self.work_channel = f"{prefix}:{WORK_CHANNEL_SUFFIX}"
        self._groups: set[str] = set()

    async def _ensure_group(self, key: str) -> None:
        if key in self._groups:
            return
        try:
            await self.r.xgroup_create(key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(key)

    async def push(self, items: list[tuple[QueueName, dict[str, bytes | str | int]]]) -> None:
        """Append entries (pipelines of at most PUSH_CHUNK) and wake the gateways of the pools
        concerned. Chunks keep each round trip short, whatever the batch size."""
        if not items:
            return
        if len(items) > PUSH_CHUNK:
            for start in range(0, len(items), PUSH_CHUNK):
                await self.push(items[start:start + PUSH_CHUNK])
            return
        keys = {q.redis_key(self.prefix): q for q, _ in items}
        for key in keys:
            await self._ensure_group(key)
        pipe = self.r.pipeline(transaction=False)
        for q, fields in items:
            pipe.xadd(q.redis_key(self.prefix), fields)
        pipe.sadd(self.registry, *keys)
        for pool in {q.pool for q in keys.values()}:
            pipe.publish(self.work_channel, pool)
        try:
            await pipe.execute()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost the group (restart without persistence): make it again and retry once.
            self._groups.clear()
            await self.push(items)

    async def names(self) -> list[QueueName]:
        return [QueueName.parse(k.decode()) for k in await self.r.smembers(self.registry)]

    async def read(self, queues: list[QueueName], count: int) -> list[Entry]:
        """New entries from `queues`, at most `count` from each; never blocks."""
        if not queues:
            return []
        streams = {q.redis_key(self.prefix): ">" for q in queues}
        for key in streams:
            await self._ensure_group(key)
        try:
            reply = await self.r.xreadgroup(GROUP, self.consumer, streams, count=count)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._groups.clear()
            return []
        return [self._entry(key.decode(), eid, f) for key, entries in reply or [] for eid, f in entries if f]

    def _entry(self, key: str, entry_id: bytes, f: dict[bytes, bytes]) -> Entry:
        return Entry(queue=key, entry_id=entry_id.decode(), batch_id=f[b"b"].decode(),
                     index=int(f[b"i"]), attempt=int(f[b"a"]), provider_index=int(f[b"p"]),
                     accepted_ms=int(f[b"t"]), task=f[b"s"], stage=f.get(b"g", b"").decode(),
                     carry=f.get(b"c", b""), dedup=f.get(b"d", b"").decode(),
                     trace=f.get(b"tr", b"").decode())

    async def ack(self, entries: list[Entry]) -> None:
        """Done with these entries: remove them (the task record keeps the history)."""
        if not entries:
            return
        by_queue: dict[str, list[str]] = {}
        for e in entries:
            by_queue.setdefault(e.queue, []).append(e.entry_id)
        pipe = self.r.pipeline(transaction=False)
        for key, ids in by_queue.items():
            pipe.xack(key, GROUP, *ids)
            pipe.xdel(key, *ids)
        await pipe.execute()

    async def touch(self, entries: list[Entry]) -> None:
        """Reset the idle time of entries this gateway still works on (one round trip)."""
        by_queue: dict[str, list[str]] = {}
        for e in entries:
            by_queue.setdefault(e.queue, []).append(e.entry_id)
        if not by_queue:
            return
        pipe = self.r.pipeline(transaction=False)
        for key, ids in by_queue.items():
            pipe.xclaim(key, GROUP, self.consumer, 0, ids, justid=True)
        await pipe.execute()

    async def claim(self, queue: QueueName, min_idle_ms: int, count: int = 100) -> list[Entry]:
        """Take over entries another (dead) gateway left pending for longer than `min_idle_ms`."""
        key = queue.redis_key(self.prefix)
        try:
            reply = await self.r.xautoclaim(key, GROUP, self.consumer, min_idle_ms, "0-0", count=count)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return []
        return [self._entry(key, eid, f) for eid, f in reply[1] if f]

    async def _group_info(self, queues: list[QueueName]) -> dict[QueueName, dict]:
        """XINFO GROUPS of each queue's group, with `lag` filled in where Redis can't tell it
        (entries deleted past the group's last read one): then stream length minus pending, an
        upper bound, so a queue is never taken for empty when it is not."""
        pipe = self.r.pipeline(transaction=False)
        for q in queues:
            pipe.xinfo_groups(q.redis_key(self.prefix))
            pipe.xlen(q.redis_key(self.prefix))
        replies = await pipe.execute(raise_on_error=False)
        out = {}
        for q, info, length in zip(queues, replies[0::2], replies[1::2]):
            if isinstance(info, Exception) or not info:
                continue
            group = next((g for g in info if g["name"] in (GROUP, GROUP.encode())), None)
            if group is not None:
                if group.get("lag") is None and not isinstance(length, Exception):
                    group["lag"] = max(0, int(length) - int(group.get("pending") or 0))
                out[q] = group
        return out

    async def lags(self, queues: list[QueueName]) -> dict[QueueName, int]:
        """Entries not yet read by any gateway, per queue (one round trip)."""
        return {q: int(g["lag"] or 0) for q, g in (await self._group_info(queues)).items()}

    async def depth(self, queues: list[QueueName]) -> dict[QueueName, tuple[int, float]]:
        """(tasks not yet read by any gateway, age in seconds of the oldest of them) per queue."""
        if not queues:
            return {}
        groups = await self._group_info(queues)
        out: dict[QueueName, tuple[int, float]] = {}
        pipe = self.r.pipeline(transaction=False)
        asked: list[QueueName] = []
        for q, group in groups.items():
            lag = int(group["lag"] or 0)
            out[q] = (lag, 0.0)
            if lag:
                last = group["last-delivered-id"]
                last = last.decode() if isinstance(last, bytes) else last
                pipe.xrange(q.redis_key(self.prefix), min="(" + last, count=1)
                asked.append(q)
        if asked:
            now_ms = time.time() * 1000
            for q, rows in zip(asked, await pipe.execute()):
                if rows:
                    oldest = int(rows[0][0].decode().split("-", 1)[0])
                    out[q] = (out[q][0], max(0.0, (now_ms - oldest) / 1000))
        return out

