"""Scenario 2 — full use of a key's limit and the hand-off between holders.

(a) bench.lease_bench: the lease module in process against the bench Redis (its own JSON).
(b) Through the mesh: 400 tasks on one key of limit 8, fake Replicate latency 100 ms, 1 gateway
    + 2 workers. Makespan (submit → last result) against the ideal ceil(400/8) × 100 ms = 5.0 s,
    and the most jobs the fake ever saw in flight for that token (must equal the limit: fewer is
    lost throughput, more breaks invariant 1).
"""

from __future__ import annotations

import asyncio
import math
import time

from bench import rig as R
from bench.external import Pending, run_module
from bench.measure import fmt, spread
from bench.traffic import local_tasks, replicate_tasks, run_batches, tally
from gen_worker.providers.base import GenerateRequest
from gen_worker.providers.replicate import ReplicateProvider

TITLE = "Key-limit efficiency and hand-off"
BUDGET_S = 300
TASKS, LIMIT, LATENCY = 400, 8, 0.1
TOKEN = "tok-limit-8"


async def _direct(url: str) -> float:
    """The same adapter calls under a bare asyncio.Semaphore(LIMIT) in this process: what the
    HTTP path alone allows (no mesh, no leases)."""
    provider = ReplicateProvider(url, prefer_wait=5)
    sem = asyncio.Semaphore(LIMIT)

    async def one(i: int) -> None:
        async with sem:
            await provider.generate(GenerateRequest(prompt=f"d{i}", model="bench/fake"), TOKEN, time.monotonic() + 60)

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(TASKS)))
        return time.perf_counter() - t0
    finally:
        await provider.aclose()


async def _through_mesh(address: str, tasks, credentials) -> dict:
    outcomes, _ = await run_batches(address, R.CLIENT_KEY, [tasks], credentials=credentials)
    t = tally(outcomes)
    o = outcomes[0]
    return {"makespan_s": o.makespan, "states": t["states"], "first_error": t["first_error"],
            "arrivals": [round(a - o.submitted, 4) for a in o.arrivals]}


async def _mesh(rig: R.Rig) -> dict:
    reps = 2 if rig.quick else 3
    ideal = math.ceil(TASKS / LIMIT) * LATENCY
    runs: dict[str, list[dict]] = {"mesh_fake": [], "direct_fake": [], "mesh_local": []}
    with R.FakeProvider(latency=LATENCY) as fake:
        # Outputs pass through as the fake's URLs (storage off), as they do for the bare
        # semaphore beside it: the figure is the limit's hand-off, not a copy into storage.
        async with R.started_mesh(rig, "key_limits", workers=2, IMAGEMESH_STORAGE_URL="none",
                                  IMAGEMESH_KEY_LIMITS=f"replicate={LIMIT},local={LIMIT}",
                                  worker_settings={"IMAGEMESH_CAPACITY": "16", "IMAGEMESH_STORAGE_URL": "none",
                                                   "IMAGEMESH_REPLICATE_BASE_URL": fake.url,
                                                   "IMAGEMESH_ALLOW_PRIVATE_URLS": "1"}) as m:
            # Warm-up: connections to the fake, the keys' lease state.
            await _through_mesh(m.address, replicate_tasks(16, prefix="w"), {"replicate": TOKEN})
            await _through_mesh(m.address, local_tasks(16, prefix="w", latency_ms=int(LATENCY * 1000)), None)
            await _direct(fake.url)
            for rep in range(reps):
                fake.reset(LATENCY)
                r = await _through_mesh(m.address, replicate_tasks(TASKS, prefix=f"k{rep}-"), {"replicate": TOKEN})
                stats = fake.stats()["tokens"].get(TOKEN, {})
                r.update(max_in_flight=stats.get("max_in_flight"), jobs=stats.get("jobs"))
                runs["mesh_fake"].append(r)
                fake.reset(LATENCY)
                d = await _direct(fake.url)
                runs["direct_fake"].append({"makespan_s": d, "max_in_flight":
                                            fake.stats()["tokens"].get(TOKEN, {}).get("max_in_flight")})
                runs["mesh_local"].append(await _through_mesh(
                    m.address, local_tasks(TASKS, prefix=f"k{rep}-", latency_ms=int(LATENCY * 1000)), None))
    for side in runs.values():
        for r in side:
            r["efficiency"] = ideal / r["makespan_s"]
    return {"ideal_s": ideal, "runs": runs}


async def run(rig: R.Rig) -> dict:
    notes, goals, rows, plots = [], [], [], []
    external = None
    try:
        external = await run_module("lease_bench", ["--redis-url", rig.redis_url],
                                    rig.log_dir("key_limits") / "lease_bench.json",
                                    rig.log_dir("key_limits") / "lease_bench.log", timeout=150)
    except Pending as exc:
        notes.append(f"(a) in-process leases: pending — {exc}.")
    finally:
        rig.flush()
    mesh = await _mesh(rig)
    runs = mesh["runs"]
    labels = {"mesh_fake": f"mesh → fake Replicate (HTTP), limit {LIMIT}",
              "direct_fake": f"bare asyncio.Semaphore({LIMIT}) → fake Replicate, same adapter",
              "mesh_local": f"mesh → `local` provider leased at limit {LIMIT} (no HTTP)"}
    eff = {k: spread([r["efficiency"] for r in v], 3) for k, v in runs.items()}
    for k, v in runs.items():
        inflight = [r.get("max_in_flight") for r in v]
        rows.append([labels[k], f"{mesh['ideal_s']:.2f}", fmt(spread([r["makespan_s"] for r in v], 3), 3),
                     fmt(eff[k], 3), ", ".join(str(x) for x in inflight) if inflight[0] is not None else "—"])
        failed = [r for r in v if r.get("states") and r["states"].get("SUCCEEDED", 0) != TASKS]
        if failed:
            notes.append(f"{k}: runs with failed tasks: {[(r['states'], r['first_error']) for r in failed]}")
    max_inflight = [r["max_in_flight"] for r in runs["mesh_fake"]]
    goals.append({"name": "mesh → fake: makespan efficiency (ideal / measured)", "value": eff["mesh_fake"]["median"],
                  "target": ">= 0.97", "met": eff["mesh_fake"]["median"] >= 0.97})
    goals.append({"name": "mesh → local (leased, no HTTP): efficiency", "value": eff["mesh_local"]["median"],
                  "target": ">= 0.97", "met": eff["mesh_local"]["median"] >= 0.97})
    goals.append({"name": "max in flight at the fake (every mesh run)", "value": max(max_inflight),
                  "target": f"== {LIMIT}", "met": all(x == LIMIT for x in max_inflight)})
    ideal_x = [i * LATENCY for i in range(math.ceil(TASKS / LIMIT) + 1)]
    series = []
    for k in ("mesh_fake", "mesh_local"):
        median_run = sorted(runs[k], key=lambda r: r["makespan_s"])[len(runs[k]) // 2]
        series.append({"label": labels[k], "x": median_run["arrivals"], "y": list(range(1, TASKS + 1))})
    series.append({"label": f"ideal ({LIMIT} every {int(LATENCY * 1000)} ms)", "x": ideal_x,
                   "y": [min(TASKS, LIMIT * i) for i in range(len(ideal_x))], "style": "steps"})
    plots.append({"file": "key_limits.png", "kind": "curves",
                  "title": f"{TASKS} tasks on one key, limit {LIMIT}, {int(LATENCY * 1000)} ms each (median runs)",
                  "xlabel": "seconds since submit", "ylabel": "results received", "series": series})
    notes.append(f"{len(runs['mesh_fake'])} repetitions of the three sides, alternating, after a warm-up; "
                 "median [min–max]. Makespan is measured by the caller, from the submit call to the last result "
                 "(submit, dispatch and result delivery included). The bare-semaphore row is the ceiling of the "
                 "HTTP path itself (httpx → aiohttp on loopback, same machine), the `local` row the mesh without HTTP.")
    result = {"table": {"columns": ["run", "ideal s", "makespan s", "efficiency", "max in flight at fake (per run)"],
                        "rows": rows},
              "goals": goals, "notes": notes, "plots": plots,
              "raw": {"ideal_s": mesh["ideal_s"],
                      "runs": {k: [{f: x for f, x in r.items() if f != "arrivals"} for r in v] for k, v in runs.items()}}}
    if external is not None:
        result["external"] = {"lease_bench": external}
    else:
        result["pending"] = ["lease_bench"]
    return result
