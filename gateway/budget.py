"""An optional daily budget per provider key: at most N predictions per key per UTC day.

    im:budget:{<key_id>}:<YYYYMMDD>   counter of attempts dispatched that day (expires in 2 days)

Every dispatched attempt under a budgeted key counts (a retry is another prediction at the
provider). Past the budget, the task fails with RATE_LIMITED saying when the budget resets;
it is not retried, since nothing would change before midnight UTC.
"""

from __future__ import annotations

import datetime

import redis.asyncio as aioredis


class DailyBudget:
    def __init__(self, redis: aioredis.Redis, budgets: dict[str, int], *, prefix: str = "im") -> None:
        self.r = redis
        self.budgets = {provider: n for provider, n in budgets.items() if n > 0}
        self.prefix = prefix

    def limit_for(self, key_id: str) -> int | None:
        return self.budgets.get(key_id.split(":", 1)[0])

    async def spend(self, key_ids: list[str]) -> list[bool]:
        """Count one prediction for each key id; False where that key's budget is spent."""
        day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
        counted = [k for k in key_ids if self.limit_for(k) is not None]
        if not counted:
            return [True] * len(key_ids)
        pipe = self.r.pipeline(transaction=False)
        for k in counted:
            key = f"{self.prefix}:budget:{{{k}}}:{day}"
            pipe.incr(key)
            pipe.expire(key, 2 * 86400)
        used = iter((await pipe.execute())[0::2])
        return [True if self.limit_for(k) is None else next(used) <= self.limit_for(k) for k in key_ids]
