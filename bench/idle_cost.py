"""Scenario 10 — idle cost: what an idle mesh asks of Redis after 1 000 distinct tokens came and
went, against the same mesh fresh.

1 gateway + 1 worker, the fake Replicate. Redis commands per second (INFO commandstats, over
15 s) of the idle mesh; then 1 000 one-task batches, each with a token of its own (1 000 keys,
1 000 queues), all finished; then, once the idle queues were collected (IMAGEMESH_QUEUE_IDLE=10
here; 60 s by default), the idle rate again. Goal: ≤ 2× the fresh rate.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from bench import rig as R
from bench.traffic import replicate_tasks
from imagemesh.client import Client

TITLE = "Idle cost after 1 000 distinct tokens came and went"
BUDGET_S = 300
WINDOW_S = 15.0
IDLE_S = 10


async def _calls(r: aioredis.Redis) -> int:
    stats = await r.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))


async def _rate(r: aioredis.Redis, seconds: float) -> float:
    before = await _calls(r)
    await asyncio.sleep(seconds)
    return (await _calls(r) - before - 1) / seconds  # the INFO call itself aside


async def run(rig: R.Rig) -> dict:
    tokens = 300 if rig.quick else 1000
    r = aioredis.Redis.from_url(rig.redis_url)
    try:
        with R.FakeProvider(latency=0.0) as fake:
            async with R.started_mesh(rig, "idle_cost", workers=1, IMAGEMESH_QUEUE_IDLE=str(IDLE_S),
                                      IMAGEMESH_MAX_KEYS_PER_TENANT=str(tokens + 10), IMAGEMESH_STORAGE_URL="none",
                                      worker_settings={"IMAGEMESH_CAPACITY": "32",
                                                       "IMAGEMESH_REPLICATE_BASE_URL": fake.url,
                                                       "IMAGEMESH_ALLOW_PRIVATE_URLS": "1"}) as m:
                await asyncio.sleep(3)
                fresh = await _rate(r, WINDOW_S)
                async with Client(m.address, R.CLIENT_KEY) as c:
                    sem = asyncio.Semaphore(64)

                    async def one(k: int) -> None:
                        async with sem:
                            async for _ in c.submit(replicate_tasks(1, prefix=f"k{k}-"),
                                                    credentials={"replicate": f"tok-{k:05d}-abcdefgh"}):
                                pass
                    await asyncio.gather(*(one(k) for k in range(tokens)))
                queues_after = await r.scard("im:queues")
                waited = 0.0
                while await r.scard("im:queues") and waited < 3 * IDLE_S + 30:
                    await asyncio.sleep(1.0)
                    waited += 1.0
                left = await r.scard("im:queues")
                after = await _rate(r, WINDOW_S)
    finally:
        await r.aclose()
    ratio = after / fresh if fresh else float("inf")
    return {
        "table": {"columns": ["idle mesh", "Redis commands/s", "queues registered"],
                  "rows": [["fresh", f"{fresh:.1f}", "0"],
                           [f"after {tokens} tokens came and went", f"{after:.1f}",
                            f"{queues_after} just after, {left} when measured"]]},
        "goals": [{"name": "idle Redis commands/s after / fresh", "value": round(ratio, 2), "target": "<= 2",
                   "met": ratio <= 2}],
        "notes": [f"{tokens} one-task batches, each with its own token (one key and one queue each); idle queues "
                  f"collected after IMAGEMESH_QUEUE_IDLE={IDLE_S} s (waited {waited:.0f} s); rates over "
                  f"{WINDOW_S:.0f} s from INFO commandstats."],
        "raw": {"fresh_per_s": fresh, "after_per_s": after, "queues_after": queues_after, "queues_left": left},
    }
