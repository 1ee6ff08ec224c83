"""What one tenant may cost the mesh in provider keys: each distinct key (a caller's token) makes
queues, lease state and gauges, so the keys one tenant uses within a window are capped.

    im:tenant:{<tenant>}:keys   zset   key id -> last use (unix ms); entries older than the
                                       window drop out, the whole key expires with the window

What can go wrong: a Redis error propagates (the submission answers UNAVAILABLE and is retried).
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis

from .lua import Scripts

# KEYS[1] the tenant's keys. ARGV: window ms, cap, then key ids. Refuses (returns {0, in use,
# new}) when the keys used within the window plus the new ones would pass the cap; otherwise
# records them as used now and returns {1}.
_ADMIT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
local new = 0
for k = 3, #ARGV do
  if not redis.call('ZSCORE', KEYS[1], ARGV[k]) then new = new + 1 end
end
local used = redis.call('ZCARD', KEYS[1])
if used + new > tonumber(ARGV[2]) then return {0, used, new} end
for k = 3, #ARGV do redis.call('ZADD', KEYS[1], now, ARGV[k]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {1}
"""

SCRIPTS = {"TENANT_KEYS": _ADMIT}


class KeysOverCap(Exception):
    def __init__(self, used: int, new: int, cap: int, window: float) -> None:
        super().__init__(f"this caller used {used} provider keys (tokens) within {window / 60:.0f} min and asks for "
                         f"{new} more; the limit is {cap}")


class TenantKeys:
    def __init__(self, redis: aioredis.Redis, *, cap: int, window: float = 3600.0, prefix: str = "im") -> None:
        self.cap = cap
        self.window = window
        self.prefix = prefix
        self.scripts = Scripts(redis, SCRIPTS)

    async def admit(self, tenant: str, key_ids: Iterable[str]) -> None:
        """Record the keys as used by the tenant; raises KeysOverCap past the cap."""
        keys = sorted(set(key_ids))
        if not keys:
            return
        reply = await self.scripts.one("TENANT_KEYS", [f"{self.prefix}:tenant:{{{tenant}}}:keys"],
                                       [int(self.window * 1000), self.cap, *keys])
        if int(reply[0]) != 1:
            raise KeysOverCap(int(reply[1]), int(reply[2]), self.cap, self.window)
