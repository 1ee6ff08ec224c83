"""Scenario 4 — results stream back as they finish.

100 tasks whose fake-Replicate jobs take 0.5–3 s (drawn once, seed 8, the same for both
sides), no key limit. Through the mesh (1 gateway + 2 workers of capacity 64) each result
arrives when its job ends; with `asyncio.gather` over the same adapter calls made directly in
this process (the pattern ImageMesh replaces) every result is in hand only when the slowest is.
The two sides alternate, 3 times each.
"""

from __future__ import annotations

import asyncio
import random
import time

from bench import rig as R
from bench.measure import fmt, spread
from bench.traffic import replicate_tasks, run_batches
from gen_worker.providers.base import GenerateRequest
from gen_worker.providers.replicate import ReplicateProvider

TITLE = "Streaming: results as they finish vs asyncio.gather"
BUDGET_S = 150
TASKS = 100
TOKEN = "tok-stream"


def latencies() -> list[float]:
    rng = random.Random(8)
    return [round(rng.uniform(0.5, 3.0), 3) for _ in range(TASKS)]


async def _gather(url: str, lat: list[float]) -> list[float]:
    provider = ReplicateProvider(url, prefer_wait=5)
    try:
        t0 = time.perf_counter()
        deadline = time.monotonic() + 60
        reqs = [GenerateRequest(prompt=f"g{i}", model="bench/fake", num_outputs=1, inputs={"_fake_latency": x})
                for i, x in enumerate(lat)]
        outs = await asyncio.gather(*(provider.generate(r, TOKEN, deadline) for r in reqs))
        done = time.perf_counter() - t0
        assert len(outs) == TASKS
        return [done] * TASKS  # gather hands back nothing before everything
    finally:
        await provider.aclose()


async def _mesh(address: str, lat: list[float], rep: int) -> list[float]:
    outcomes, _ = await run_batches(address, R.CLIENT_KEY, [replicate_tasks(TASKS, prefix=f"s{rep}-", latencies=lat)],
                                    credentials={"replicate": TOKEN})
    o = outcomes[0]
    if o.succeeded != TASKS:
        raise RuntimeError(f"streaming run: {dict(o.states)} {o.first_error}")
    return [a - o.submitted for a in o.arrivals]


async def run(rig: R.Rig) -> dict:
    reps = 2 if rig.quick else 3
    lat = latencies()
    curves: dict[str, list[list[float]]] = {"mesh": [], "gather": []}
    with R.FakeProvider(latency=0.05) as fake:
        async with R.started_mesh(rig, "streaming", workers=2, IMAGEMESH_KEY_LIMITS="replicate=0",
                                  worker_settings={"IMAGEMESH_CAPACITY": "64",
                                                   "IMAGEMESH_REPLICATE_BASE_URL": fake.url,
                                                   "IMAGEMESH_ALLOW_PRIVATE_URLS": "1"}) as m:
            await _mesh(m.address, [0.05] * TASKS, -1)  # warm-up
            await _gather(fake.url, [0.05] * TASKS)
            for rep in range(reps):
                curves["mesh"].append(await _mesh(m.address, lat, rep))
                curves["gather"].append(await _gather(fake.url, lat))
    first = {k: spread([c[0] for c in v], 3) for k, v in curves.items()}
    half = {k: spread([c[TASKS // 2 - 1] for c in v], 3) for k, v in curves.items()}
    last = {k: spread([c[-1] for c in v], 3) for k, v in curves.items()}
    ordered = sorted(lat)
    rows = [[name, fmt(first[k], 3), fmt(half[k], 3), fmt(last[k], 3)]
            for k, name in (("mesh", "mesh (SubmitBatch stream)"), ("gather", "asyncio.gather, direct calls"))]
    rows.append(["job latencies themselves", f"{ordered[0]:.3f}", f"{ordered[TASKS // 2 - 1]:.3f}", f"{ordered[-1]:.3f}"])
    med = {k: sorted(v, key=lambda c: c[-1])[len(v) // 2] for k, v in curves.items()}
    ys = list(range(1, TASKS + 1))
    return {
        "table": {"columns": ["side", "first result s", "50th result s", "last result s"], "rows": rows},
        "goals": [{"name": "time to first result, mesh vs gather (medians)",
                   "value": f"{first['mesh']['median']:.2f} s vs {first['gather']['median']:.2f} s",
                   "target": "first result near the fastest job (0.5 s)",
                   "met": first["mesh"]["median"] < first["gather"]["median"] / 2}],
        "plots": [{"file": "streaming.png", "kind": "curves", "title": "100 tasks of 0.5–3 s: results received over time",
                   "xlabel": "seconds since submit", "ylabel": "results received",
                   "series": [{"label": "mesh (median run)", "x": [round(x, 4) for x in med["mesh"]], "y": ys},
                              {"label": "asyncio.gather (median run)", "x": [round(x, 4) for x in med["gather"]], "y": ys,
                               "style": "steps"},
                              {"label": "job latencies (lower bound)", "x": ordered, "y": ys, "style": "dotted"}]}],
        "notes": [f"{reps} repetitions per side, alternating, after a warm-up; medians [min–max]. "
                  "Latencies drawn uniformly in 0.5–3 s with seed 8, passed as the fake's `_fake_latency` input."],
        "raw": {"latencies": lat, "curves": {k: [[round(x, 4) for x in c] for c in v] for k, v in curves.items()}},
    }
