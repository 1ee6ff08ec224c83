"""Task queues in Redis: one stream per *flow* — (pool, lease key, tenant, priority class) —
read by every gateway as one consumer group.

    im:q:{<pool>|<key_id>|<tenant>|<class>}   stream   queue entries (format: gateway.entries)
    im:queues                                 set      the flows that exist, for gateways to find
    im:work                                   channel  a pool name, published when work was added

One stream per key is what keeps a saturated key from blocking anything else (invariant 3): a
gateway only reads from the queues of keys that are not waiting for a lease. One stream per
tenant and class within a key is what lets a gateway share the key fairly (gateway.fairness):
a tenant's single task is never behind another tenant's backlog.

Only live work costs anything: a flow that stayed empty, with nothing pending, for `idle`
seconds is collected (`collect`): removed from `im:queues`, then its stream deleted by a script
that checks it is still empty; if it is not (a push raced), it is registered again. A push
appends its entries (creating stream and group) and registers the flow afterwards, so whatever
the interleaving, a flow with entries ends up registered.

An entry stays pending in the group (owned by the gateway that read it) until the task's
attempt is over. A gateway touches its pending entries every tick (`touch`), so an entry idle
longer than the claim threshold belongs to a dead gateway and another one `claim`s it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .entries import QueueEntry
from .lua import Scripts

log = logging.getLogger("imagemesh.gateway.queues")

# KEYS[1] a queue stream. ARGV: the group, then per entry: its number of field/value arguments n
# and those n arguments. Appends the entries in one call (the group is made with the stream, so
# a queue collected while empty comes back whole). Returns how many were added.
_PUSH = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
end
local k, added = 2, 0
while k <= #ARGV do
  local n = tonumber(ARGV[k])
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, k + 1, k + n))
  k = k + n + 1
  added = added + 1
end
return added
"""

# KEYS[1] a queue stream. ARGV: the group, idle ms. Deletes the stream if it holds no entry,
# nothing is pending in any group, and its newest entry is older than `idle ms`. Returns 1 when
# the stream is gone (deleted now, or already), 0 when it lives on.
_COLLECT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
if redis.call('XLEN', KEYS[1]) > 0 then return 0 end
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  for k = 1, #group, 2 do
    if group[k] == 'pending' and tonumber(group[k + 1]) > 0 then return 0 end
  end
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last = '0-0'
for k = 1, #info, 2 do
  if info[k] == 'last-generated-id' then last = info[k + 1] end
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if now - tonumber(string.match(last, '^(%d+)')) < tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

SCRIPTS = {"PUSH": _PUSH, "COLLECT": _COLLECT}

INTERACTIVE, BATCH = "i", "b"  # priority classes (gateway.fairness weighs them)

GROUP = "gw"
PUSH_CHUNK = 1000
WORK_CHANNEL_SUFFIX = "work"


@dataclass(frozen=True)
class QueueName:
    """A flow: the queue of one tenant's tasks of one priority class under one lease key."""

    pool: str
    key_id: str
    tenant: str = ""
    klass: str = BATCH

    def redis_key(self, prefix: str) -> str:
        return f"{prefix}:q:{{{self.pool}|{self.key_id}|{self.tenant}|{self.klass}}}"

    @staticmethod
    def parse(redis_key: str) -> "QueueName":
        inner = redis_key[redis_key.index("{") + 1: redis_key.rindex("}")]
        # Key ids hold ':' but never '|'; tenant names hold neither (imagemesh.auth).
        parts = inner.split("|")
        pool, key_id = parts[0], parts[1] if len(parts) > 1 else ""
        tenant = parts[2] if len(parts) > 2 else ""
        klass = parts[3] if len(parts) > 3 else BATCH
        return QueueName(pool, key_id, tenant, klass)


class TaskQueues:
    def __init__(self, redis: aioredis.Redis, *, consumer: str, prefix: str = "im") -> None:
        self.r = redis
        self.prefix = prefix
        self.consumer = consumer
        self.registry = f"{prefix}:queues"
        self.work_channel = f"{prefix}:{WORK_CHANNEL_SUFFIX}"
        self.scripts = Scripts(redis, SCRIPTS)

    async def push(self, items: list[tuple[QueueName, QueueEntry]]) -> None:
        """Append entries (one PUSH script per queue, in chunks of PUSH_CHUNK entries, one round
        trip) and wake the gateways of the pools concerned."""
        if not items:
            return
        by_queue: dict[str, list[QueueEntry]] = {}
        names: dict[str, QueueName] = {}
        for q, entry in items:
            key = q.redis_key(self.prefix)
            by_queue.setdefault(key, []).append(entry)
            names[key] = q
        calls = []
        for key, entries in by_queue.items():
            for start in range(0, len(entries), PUSH_CHUNK):
                args: list[object] = [GROUP]
                for entry in entries[start:start + PUSH_CHUNK]:
                    fields = [x for kv in entry.encode().items() for x in kv]
                    args += [len(fields), *fields]
                calls.append(("PUSH", [key], args))
        await self.scripts.run(calls)
        # After the entries (a collected queue is registered again by whoever pushed last).
        pipe = self.r.pipeline(transaction=False)
        pipe.sadd(self.registry, *by_queue)
        for pool in {q.pool for q in names.values()}:
            pipe.publish(self.work_channel, pool)
        await pipe.execute()

    async def names(self) -> list[QueueName]:
        return [QueueName.parse(k.decode()) for k in await self.r.smembers(self.registry)]

    async def read(self, counts: dict[QueueName, int]) -> list[QueueEntry]:
        """New entries: up to `counts[q]` from each queue q, in one round trip; never blocks. A
        queue that is gone (collected) reads as empty."""
        counts = {q: n for q, n in counts.items() if n > 0}
        if not counts:
            return []
        pipe = self.r.pipeline(transaction=False)
        for q, n in counts.items():
            pipe.xreadgroup(GROUP, self.consumer, {q.redis_key(self.prefix): ">"}, count=n)
        rows = []
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, ResponseError) and "NOGROUP" in str(reply):
                continue  # collected meanwhile: nothing to read
            if isinstance(reply, Exception):
                raise reply
            rows += [(key.decode(), eid, f) for key, entries in reply or [] for eid, f in entries]
        return await self._decode(rows)

    async def collect(self, queue: QueueName, idle_s: float) -> bool:
        """Remove an empty, idle flow (see the module docstring). True when it is gone."""
        key = queue.redis_key(self.prefix)
        await self.r.srem(self.registry, key)
        try:
            gone = int(await self.scripts.one("COLLECT", [key], [GROUP, int(idle_s * 1000)])) == 1
        except BaseException:
            await self.r.sadd(self.registry, key)
            raise
        if not gone:
            await self.r.sadd(self.registry, key)
        return gone

    async def _decode(self, rows: list[tuple[str, bytes, dict]]) -> list[QueueEntry]:
        """Entries that decode; one that doesn't (not ours, or deleted under us: XAUTOCLAIM
        gives a deleted pending entry as empty) is removed and logged, never retried forever."""
        out, bad = [], []
        for key, eid, f in rows:
            try:
                out.append(QueueEntry.decode(key, eid.decode(), f))
            except (KeyError, ValueError, TypeError):
                bad.append(QueueEntry(batch_id="", index=0, attempt=0, accepted_ms=0, task=b"",
                                      queue=key, entry_id=eid.decode()))
        if bad:
            log.error("dropping %d undecodable queue entries (first: %s in %s)", len(bad), bad[0].entry_id, bad[0].queue)
            await self.ack(bad)
        return out

    async def ack(self, entries: list[QueueEntry]) -> None:
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

    async def touch(self, entries: list[QueueEntry]) -> None:
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

    async def claim(self, queue: QueueName, min_idle_ms: int, count: int = 100) -> list[QueueEntry]:
        """Take over entries another (dead) gateway left pending for longer than `min_idle_ms`."""
        key = queue.redis_key(self.prefix)
        try:
            reply = await self.r.xautoclaim(key, GROUP, self.consumer, min_idle_ms, "0-0", count=count)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return []
        return await self._decode([(key, eid, f) for eid, f in reply[1]])

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

