"""Scenario 11 — the event loop: the throughput ceiling of scenario 1 (local provider, 1 gateway +
2 workers, outputs inline) with every process on uvloop against every process on asyncio's own
loop (IMAGEMESH_EVENT_LOOP), on fresh meshes, alternating. The processes' default is uvloop
when installed; this scenario keeps that choice measured.
"""

from __future__ import annotations

from bench import rig as R
from bench.measure import fmt, spread
from bench.throughput import CAPACITY, _mesh_run
from bench.traffic import local_tasks

TITLE = "Event loop: uvloop vs asyncio (throughput ceiling)"
BUDGET_S = 300
LOOPS = ("uvloop", "asyncio")


async def _one(rig: R.Rig, loop: str, rep: int, n: int) -> dict:
    async with R.started_mesh(rig, f"event_loop_{loop}_{rep}", workers=2, IMAGEMESH_KEY_LIMITS="local=0",
                              IMAGEMESH_EVENT_LOOP=loop, worker_settings={"IMAGEMESH_CAPACITY": CAPACITY}) as m:
        await _mesh_run(m, 1000, lambda k: local_tasks(k, prefix="w"))  # warm-up, not counted
        return await _mesh_run(m, n, lambda k: local_tasks(k, prefix=f"r{rep}-"), redis_pid=rig.redis.proc.pid)


async def run(rig: R.Rig) -> dict:
    n = 5000 if rig.quick else 10000
    reps = 2 if rig.quick else 3
    runs: dict[str, list[dict]] = {loop: [] for loop in LOOPS}
    for rep in range(reps):
        for loop in LOOPS if rep % 2 == 0 else reversed(LOOPS):
            runs[loop].append(await _one(rig, loop, rep, n))

    def col(loop: str, field: str) -> dict:
        return spread([r[field] for r in runs[loop]], 3)

    ratio = col("uvloop", "tasks_per_s")["median"] / col("asyncio", "tasks_per_s")["median"]
    return {
        "table": {"columns": ["event loop", "tasks", "tasks/s", "gateway CPU-s / 1000 tasks",
                              "workers CPU-s / 1000 tasks"],
                  "rows": [[loop, n, fmt(col(loop, "tasks_per_s")), fmt(col(loop, "gateway_cpu_s_per_1000")),
                            fmt(col(loop, "workers_cpu_s_per_1000"))] for loop in LOOPS]},
        "goals": [{"name": "uvloop / asyncio tasks/s (medians)", "value": round(ratio, 2), "target": ">= 1",
                   "met": ratio >= 1}],
        "notes": [f"{reps} repetitions, each loop on fresh processes (gateway and workers alike), alternating; "
                  "medians [min–max]. The processes' default (IMAGEMESH_EVENT_LOOP=auto) is uvloop when installed."],
        "raw": runs,
    }
