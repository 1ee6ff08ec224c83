"""Scenario 5 — scale-out: throughput with 1, 2, 4 generation workers behind 1 gateway, and
4 workers behind 1 vs 2 gateways, at a fixed provider latency.

The fake Replicate answers every job after 100 ms, no key limit; each worker runs 16 tasks at
once, so a worker's ceiling is 160 tasks/s and more workers should add throughput until the
machine's 2 cores are the limit. With 2 gateways, half of the batches go to each and the
workers are split between them (tasks sit in Redis: any gateway may dispatch any of them).
Each configuration starts fresh processes; the configurations take turns, twice (once with
--quick), and the tasks/s median and range are reported.
"""

from __future__ import annotations

from bench import rig as R
from bench.measure import cpu_seconds, fmt, spread
from bench.traffic import replicate_tasks, run_batches, tally

TITLE = "Scale-out: workers and gateways"
BUDGET_S = 300
LATENCY = 0.1
CAPACITY = 16
CONFIGS = [(1, 1), (1, 2), (1, 4), (2, 4)]  # (gateways, workers)
TOKEN = "tok-scale"


async def _one(rig: R.Rig, fake: R.FakeProvider, gateways: int, workers: int, n: int, rep: int) -> dict:
    async with R.started_mesh(rig, f"scale_out_{gateways}g{workers}w", gateways=gateways, workers=workers,
                              IMAGEMESH_KEY_LIMITS="replicate=0",
                              worker_settings={"IMAGEMESH_CAPACITY": str(CAPACITY),
                                               "IMAGEMESH_REPLICATE_BASE_URL": fake.url,
                                                   "IMAGEMESH_ALLOW_PRIVATE_URLS": "1"}) as m:
        addresses = [g.values["GATEWAY"] for g in m.gateways]
        await run_batches(addresses[0], R.CLIENT_KEY, [replicate_tasks(2 * CAPACITY * workers, prefix="w")],
                          credentials={"replicate": TOKEN}, addresses=addresses)  # warm-up
        pids = [g.proc.pid for g in m.gateways]
        cpu0 = sum(cpu_seconds(p) for p in pids)
        per_batch = n // 4
        batches = [replicate_tasks(per_batch, prefix=f"s{rep}-{i}-") for i in range(4)]
        outcomes, wall = await run_batches(addresses[0], R.CLIENT_KEY, batches, credentials={"replicate": TOKEN},
                                           addresses=addresses)
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
        t = tally(outcomes)
        if t["states"].get("SUCCEEDED", 0) != per_batch * 4:
            raise RuntimeError(f"scale-out {gateways}g{workers}w: {t}")
        return {"gateways": gateways, "workers": workers, "tasks_per_s": per_batch * 4 / wall,
                "gateway_cpu_s_per_1000": 1000 * cpu / (per_batch * 4)}


async def run(rig: R.Rig) -> dict:
    reps = 1 if rig.quick else 2
    n = 1200 if rig.quick else 2400
    runs: list[dict] = []
    with R.FakeProvider(latency=LATENCY) as fake:
        for rep in range(reps):
            for g, w in CONFIGS:
                runs.append(await _one(rig, fake, g, w, n, rep))
    rows, bars, by = [], [], {}
    for g, w in CONFIGS:
        mine = [r for r in runs if r["gateways"] == g and r["workers"] == w]
        tps = spread([r["tasks_per_s"] for r in mine], 1)
        by[(g, w)] = tps
        label = f"{g} gateway{'s' if g > 1 else ''}, {w} worker{'s' if w > 1 else ''}"
        rows.append([label, fmt(tps), f"{w * CAPACITY / LATENCY:.0f}",
                     fmt(spread([r["gateway_cpu_s_per_1000"] for r in mine], 3))])
        bars.append({"label": f"{g}g/{w}w", **tps})
    speedup = {w: by[(1, w)]["median"] / by[(1, 1)]["median"] for _, w in CONFIGS[:3]}
    return {
        "table": {"columns": ["configuration", "tasks/s", "worker-capacity bound tasks/s",
                              "gateway CPU-s / 1000 tasks (all gateways)"], "rows": rows},
        "goals": [{"name": "speed-up 1 → 2 → 4 workers (1 gateway)",
                   "value": " / ".join(f"{speedup[w]:.2f}" for w in (1, 2, 4)), "target": "grows with workers",
                   "met": speedup[2] > 1.3 and speedup[4] > speedup[2]},
                  {"name": "2 gateways vs 1 (4 workers)", "value": round(by[(2, 4)]["median"] / by[(1, 4)]["median"], 2),
                   "target": "≥ 0.95 (no loss from a second replica)",
                   "met": by[(2, 4)]["median"] >= 0.95 * by[(1, 4)]["median"]}],
        "plots": [{"file": "scale_out.png", "kind": "bars",
                   "title": f"Throughput by configuration (fake latency {int(LATENCY * 1000)} ms, capacity {CAPACITY}/worker)",
                   "ylabel": "tasks/s", "bars": bars}],
        "notes": [f"{n} tasks per run (4 batches at once), {reps} round(s) over the configurations; each configuration "
                  "on fresh processes after a warm-up batch. All processes (client, gateways, workers, fake, Redis) "
                  "share this machine's cores, so past 2 workers the CPU, not the mesh, sets the ceiling."],
        "raw": runs,
    }
