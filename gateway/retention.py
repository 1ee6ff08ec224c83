"""How long stored objects live and how many bytes each tenant holds: an index in Redis and a
sweeper that deletes what expired.

Objects are collected by *group*: a batch (`tenant/batch`) or one upload (`tenant/~inputs/id`).
All keys share the hash tag `{stored}` (one slot, scripts work on Redis Cluster):

    im:{stored}:exp      zset   group -> expiry (unix ms); only ever moved later (ZADD GT)
    im:{stored}:size     hash   group -> bytes recorded
    im:{stored}:tenant   hash   tenant segment -> bytes recorded (the quota's count)
    im:{stored}:held     hash   group -> 1 while its expiry is only a placeholder

A group's expiry is `retention` after its last recorded result (the batch's event log expires
`retention` after its summary, so its objects live as long as it does). A group is also
indexed when its first attempt is assigned, with a placeholder expiry (`retention` plus the
longest an attempt may run) that its first recorded result replaces: objects of attempts that
never report (a lost worker, an oversized second output) are collected with the batch even if
no result of it ever records a byte.

The sweep (every gateway runs one; they share the work): CLAIM moves due groups' expiry a
little later (a sweeper that dies mid-way leaves them to the next), the store deletes each
group's prefix, FORGET drops the group and subtracts its bytes from its tenant, unless a result
was recorded meanwhile (its expiry moved): then it is swept again at the new expiry.

An S3 lifecycle rule expiring objects `retention` + 1 day after creation is a good safety net
under this (SeaweedFS, AWS, R2 and MinIO accept `Expiration.Days`); it can't replace the sweep:
it works in whole days and knows nothing of the quota.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from imagemesh.storage import ObjectStore, StorageError
from imagemesh.storage.keys import tenant_of

log = logging.getLogger("imagemesh.gateway.retention")

# KEYS[1] exp, KEYS[2] size, KEYS[3] tenant, KEYS[4] held. ARGV: expiry ms, placeholder (0|1),
# then (group, tenant, bytes)... A placeholder only indexes a group not indexed yet; a result
# replaces a placeholder's expiry, and otherwise only ever moves an expiry later.
_RECORD = """
for i = 3, #ARGV, 3 do
  local g = ARGV[i]
  if ARGV[2] == '1' then
    if redis.call('ZADD', KEYS[1], 'NX', ARGV[1], g) == 1 then redis.call('HSET', KEYS[4], g, 1) end
  elseif redis.call('HDEL', KEYS[4], g) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[1], g)
  else
    redis.call('ZADD', KEYS[1], 'GT', ARGV[1], g)
  end
  if tonumber(ARGV[i + 2]) > 0 then
    redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 2])
    redis.call('HINCRBY', KEYS[3], ARGV[i + 1], ARGV[i + 2])
  end
end
return 1
"""

# KEYS[1] exp. ARGV: now ms, claimed-until ms, limit. The due groups, now claimed.
_CLAIM = """
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[3])
for _, g in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], g) end
return due
"""

# KEYS[1] exp, KEYS[2] size, KEYS[3] tenant, KEYS[4] held. ARGV: claimed-until ms, then (group, tenant)...
_FORGET = """
local n = 0
for i = 2, #ARGV, 2 do
  local g = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], g)
  if score and tonumber(score) == tonumber(ARGV[1]) then
    local bytes = tonumber(redis.call('HGET', KEYS[2], g) or '0')
    redis.call('ZREM', KEYS[1], g)
    redis.call('HDEL', KEYS[2], g)
    redis.call('HDEL', KEYS[4], g)
    if redis.call('HINCRBY', KEYS[3], ARGV[i + 1], -bytes) <= 0 then
      redis.call('HDEL', KEYS[3], ARGV[i + 1])
    end
    n = n + 1
  end
end
return n
"""


# Script names as the fault-injection sweep labels them (tests/faults).
SCRIPTS = {"RETENTION_RECORD": _RECORD, "RETENTION_CLAIM": _CLAIM, "RETENTION_FORGET": _FORGET}


class Retention:
    def __init__(self, redis: aioredis.Redis, *, prefix: str = "im", retention: float = 86400.0,
                 claim_seconds: float = 300.0) -> None:
        self.r = redis
        self.retention = retention
        self.claim_seconds = claim_seconds
        self.keys = [f"{prefix}:{{stored}}:exp", f"{prefix}:{{stored}}:size", f"{prefix}:{{stored}}:tenant",
                     f"{prefix}:{{stored}}:held"]
        self._record = redis.register_script(_RECORD)
        self._claim = redis.register_script(_CLAIM)
        self._forget = redis.register_script(_FORGET)

    async def record(self, sizes: Mapping[str, int]) -> None:
        """Bytes stored per group; each group then expires `retention` from now (or later, if
        a result recorded it so)."""
        await self._write(sizes, self.retention, placeholder=False)

    async def hold(self, groups: list[str], longest_attempt: float) -> None:
        """Index groups not indexed yet, until `retention` + `longest_attempt` from now."""
        await self._write({g: 0 for g in groups}, self.retention + longest_attempt, placeholder=True)

    async def _write(self, sizes: Mapping[str, int], seconds: float, *, placeholder: bool) -> None:
        if not sizes:
            return
        expiry = int((time.time() + seconds) * 1000)
        args: list[str | int] = [expiry, int(placeholder)]
        for group, size in sizes.items():
            args += [group, tenant_of(group), int(size)]
        await self._record(keys=self.keys, args=args)

    async def tenant_bytes(self, tenant_segment: str) -> int:
        return int(await self.r.hget(self.keys[2], tenant_segment) or 0)

    async def expiry_ms(self, group: str) -> int | None:
        score = await self.r.zscore(self.keys[0], group)
        return None if score is None else int(score)

    async def sweep(self, store: ObjectStore, *, limit: int = 100) -> int:
        """Delete due groups from `store`; returns how many were forgotten."""
        now = int(time.time() * 1000)
        claimed_until = now + int(self.claim_seconds * 1000)
        due = [g.decode() for g in await self._claim(keys=[self.keys[0]], args=[now, claimed_until, limit])]
        done: list[str] = []
        for group in due:
            try:
                await store.delete_prefix(group)
                done.append(group)
            except StorageError as exc:
                log.warning("could not delete expired objects of a group: %s", exc)
        if not done:
            return 0
        args: list[str | int] = [claimed_until]
        for group in done:
            args += [group, tenant_of(group)]
        return int(await self._forget(keys=self.keys, args=args))

    async def run(self, store: ObjectStore, interval: float) -> None:
        """Sweep every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                while await self.sweep(store) >= 100:
                    pass
            except (RedisError, StorageError) as exc:
                log.warning("sweep of expired objects failed (%s); next in %.0fs", type(exc).__name__, interval)
