"""Scenario 9 — fairness between tenants on one key: tenant B's single task, submitted while
tenant A has 10 000 tasks queued on the same key, against B's task alone.

One key (the fake Replicate, one token both tenants pass), limit 8, 100 ms per job, 1 gateway +
2 workers. Each repetition: B alone (submit → result), then A's 10 000 tasks (10 batches of
1 000) accepted and running, then B again; A is cancelled afterwards. Goal: B with A's backlog
/ B alone ≤ 2 (a FIFO per key would make B wait for all of A: 125 s).
"""

from __future__ import annotations

import asyncio
import time

from bench import rig as R
from bench.measure import fmt, spread
from bench.traffic import replicate_tasks
from imagemesh.client import Client
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.processes import OTHER_CLIENT_KEY

TITLE = "Fairness: one tenant's task behind another tenant's backlog on the same key"
BUDGET_S = 420
TOKEN, LIMIT, LATENCY = "tok-shared-key", 8, 0.1


async def _latency(address: str, api_key: str, name: str) -> float:
    async with Client(address, api_key) as c:
        started = time.perf_counter()
        async for e in c.submit(replicate_tasks(1, prefix=name), credentials={"replicate": TOKEN}):
            if e.HasField("result"):
                if e.result.state != pb.SUCCEEDED:
                    raise RuntimeError(f"B's task failed: {e.result.error.message}")
                return time.perf_counter() - started
    raise RuntimeError("no result")


async def _backlog(address: str, tasks: int, accepted: asyncio.Event, batch_ids: list[str]) -> None:
    async with Client(address, R.CLIENT_KEY) as c:
        async def one(k: int) -> None:
            async for e in c.submit(replicate_tasks(1000, prefix=f"a{k}-"), credentials={"replicate": TOKEN}):
                if e.HasField("accepted"):
                    batch_ids.append(e.batch_id)
                    if len(batch_ids) == tasks // 1000:
                        accepted.set()
        await asyncio.gather(*(one(k) for k in range(tasks // 1000)))


async def run(rig: R.Rig) -> dict:
    reps = 2 if rig.quick else 3
    a_tasks = 4000 if rig.quick else 10_000
    alone, behind, queued = [], [], []
    with R.FakeProvider(latency=LATENCY) as fake:
        async with R.started_mesh(rig, "fairness", workers=2, IMAGEMESH_KEY_LIMITS=f"replicate={LIMIT}",
                                  worker_settings={"IMAGEMESH_CAPACITY": "16", "IMAGEMESH_STORAGE_URL": "none",
                                                   "IMAGEMESH_REPLICATE_BASE_URL": fake.url,
                                                   "IMAGEMESH_ALLOW_PRIVATE_URLS": "1"},
                                  IMAGEMESH_STORAGE_URL="none") as m:
            await _latency(m.address, OTHER_CLIENT_KEY, "warm")
            for rep in range(reps):
                alone.append(await _latency(m.address, OTHER_CLIENT_KEY, f"alone{rep}-"))
                accepted, batch_ids = asyncio.Event(), []
                a = asyncio.create_task(_backlog(m.address, a_tasks, accepted, batch_ids))
                await asyncio.wait_for(accepted.wait(), 120)
                await asyncio.sleep(1.0)  # A's backlog is running on every slot of the key
                async with Client(m.address, R.CLIENT_KEY) as a_client:  # batch ids are per tenant
                    status = [await a_client.status(b) for b in batch_ids]
                queued.append(sum(s.queued for s in status))
                behind.append(await _latency(m.address, OTHER_CLIENT_KEY, f"behind{rep}-"))
                async with Client(m.address, R.CLIENT_KEY) as c:
                    for b in batch_ids:
                        await c.cancel(b)
                await asyncio.wait_for(a, 60)
    ratio = sorted(behind)[len(behind) // 2] / sorted(alone)[len(alone) // 2]
    return {
        "table": {"columns": ["B's single task", "latency s", "A's tasks queued on the key at B's submit"],
                  "rows": [["alone", fmt(spread(alone), 3), "0"],
                           ["behind A's backlog", fmt(spread(behind), 3), ", ".join(map(str, queued))]]},
        "goals": [{"name": "B's latency behind A's backlog / alone (medians)", "value": round(ratio, 2),
                   "target": "<= 2", "met": ratio <= 2}],
        "notes": [f"{reps} repetitions; A submitted {a_tasks} tasks (batches of 1 000) as tenant team-a, B is "
                  f"tenant team-b; both pass the same token, so one key (limit {LIMIT}, {LATENCY * 1000:.0f} ms "
                  "per job). A FIFO per key would have B wait for A's whole backlog."],
        "raw": {"alone_s": alone, "behind_s": behind, "a_queued": queued},
    }
