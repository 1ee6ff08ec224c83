"""Scenario 1 — throughput ceiling: 20 000 trivial generate tasks, 1 gateway + 2 generation
workers, no key limit; the same work through Celery (2 solo-pool workers, Redis broker and
result backend) on the same machine, run alternately with the mesh.

The ceiling uses the offline `local` provider with latency 0 (a 16×16 PNG per task): the fake
HTTP server would measure httpx and aiohttp, not the mesh. The same load through the fake
Replicate (latency 0, key not limited) is reported beside it for reference.

Tasks are submitted as 20 batches of 1 000 at once over one channel (the gateway's default
IMAGEMESH_MAX_BATCH_TASKS is kept). Gateway CPU-seconds come from psutil on the gateway's pid.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

from bench import rig as R
from bench.celery_baseline import celery_workers, run_celery
from bench.measure import cpu_seconds, fmt, spread
from bench.traffic import local_tasks, replicate_tasks, run_batches, tally

TITLE = "Throughput ceiling (mesh vs Celery)"
BUDGET_S = 420
BATCH = 1000
CAPACITY = "32"


async def _mesh_run(m, tasks_per_run: int, make, credentials=None, redis_pid: int | None = None) -> dict:
    gw = m.gateways[0].proc.pid
    workers = [w.proc.pid for w in m.workers]
    batches = [make(min(BATCH, tasks_per_run - i)) for i in range(0, tasks_per_run, BATCH)]
    cpu_gw, cpu_w, cpu_c = cpu_seconds(gw), sum(cpu_seconds(p) for p in workers), time.process_time()
    cpu_r = cpu_seconds(redis_pid) if redis_pid else 0.0
    outcomes, wall = await run_batches(m.address, R.CLIENT_KEY, batches, credentials=credentials)
    cpu_gw, cpu_w = cpu_seconds(gw) - cpu_gw, sum(cpu_seconds(p) for p in workers) - cpu_w
    cpu_c = time.process_time() - cpu_c
    cpu_r = (cpu_seconds(redis_pid) - cpu_r) if redis_pid else float("nan")
    t = tally(outcomes)
    if t["states"].get("SUCCEEDED", 0) != tasks_per_run:
        raise RuntimeError(f"mesh run: {t}")
    return {"wall_s": wall, "tasks_per_s": tasks_per_run / wall,
            "gateway_cpu_s_per_1000": 1000 * cpu_gw / tasks_per_run,
            "workers_cpu_s_per_1000": 1000 * cpu_w / tasks_per_run,
            "client_cpu_s_per_1000": 1000 * cpu_c / tasks_per_run,
            "redis_cpu_s_per_1000": 1000 * cpu_r / tasks_per_run}


async def run(rig: R.Rig) -> dict:
    n = 5000 if rig.quick else 20000
    n_ref = 2000 if rig.quick else 5000
    reps = 2 if rig.quick else 3
    runs: dict[str, list[dict]] = {"mesh_local": [], "celery": [], "mesh_fake_replicate": [],
                                   "mesh_local_after_second_key": []}
    celery_url = rig.redis_url.rsplit("/", 1)[0] + "/1"
    redis_pid = rig.redis.proc.pid
    with R.FakeProvider(latency=0.0) as fake:
        # Outputs inline, as before storage existed (scenario 8 measures the stores beside it).
        settings = dict(IMAGEMESH_KEY_LIMITS="local=0,replicate=0", IMAGEMESH_STORAGE_URL="none",
                        worker_settings={"IMAGEMESH_CAPACITY": CAPACITY, "IMAGEMESH_REPLICATE_BASE_URL": fake.url})
        async with R.started_mesh(rig, "throughput", workers=2, **settings) as m:
            with celery_workers(celery_url, 2, rig.log_dir("throughput")) as cprocs:
                # Warm-up (connections, imports, caches): not counted.
                await _mesh_run(m, 1000, lambda k: local_tasks(k, prefix="w"))
                await asyncio.to_thread(run_celery, celery_url, 200, cprocs, 60)
                for rep in range(reps):
                    runs["mesh_local"].append(await _mesh_run(m, n, lambda k: local_tasks(k, prefix=f"l{rep}-"),
                                                              redis_pid=redis_pid))
                    runs["celery"].append(await asyncio.to_thread(run_celery, celery_url, n, cprocs, 180))
            # A regression check: once a second key's queue exists (10 tasks, now empty), the
            # same local load used to run at half the rate (fixed in 95a28c3; see the report's note).
            await run_batches(m.address, R.CLIENT_KEY, [replicate_tasks(10, prefix="x")], credentials={"replicate": "tok"})
            runs["mesh_local_after_second_key"].append(await _mesh_run(
                m, n, lambda k: local_tasks(k, prefix="z-"), redis_pid=redis_pid))
        # The reference through the fake, on fresh processes and a flushed Redis (one key only).
        async with R.started_mesh(rig, "throughput_fake", workers=2, **settings) as m:
            await _mesh_run(m, 500, lambda k: replicate_tasks(k, prefix="w"), credentials={"replicate": "tok"})
            for rep in range(reps):
                runs["mesh_fake_replicate"].append(await _mesh_run(
                    m, n_ref, lambda k: replicate_tasks(k, prefix=f"r{rep}-"), credentials={"replicate": "tok"},
                    redis_pid=redis_pid))
    return summarize(runs, n, n_ref)


def summarize(runs: dict[str, list[dict]], n: int, n_ref: int) -> dict:
    def col(name: str, field: str) -> dict:
        return spread([r[field] for r in runs[name]], 3)

    mesh_tps, celery_tps = col("mesh_local", "tasks_per_s"), col("celery", "tasks_per_s")
    total = [sum(r[f] for f in ("gateway_cpu_s_per_1000", "workers_cpu_s_per_1000", "client_cpu_s_per_1000",
                                "redis_cpu_s_per_1000")) for r in runs["mesh_local"]]
    cores = os.cpu_count() or 1
    ratios = [a["tasks_per_s"] / b["tasks_per_s"] for a, b in zip(runs["mesh_local"], runs["celery"])]
    ratio = spread(ratios, 2)
    rows = [
        ["mesh, local provider (ceiling)", n, fmt(mesh_tps), fmt(col("mesh_local", "gateway_cpu_s_per_1000")),
         fmt(col("mesh_local", "workers_cpu_s_per_1000")), fmt(col("mesh_local", "client_cpu_s_per_1000"))],
        ["Celery 5 + Redis, 2 solo workers", n, fmt(celery_tps), "—",
         fmt(col("celery", "workers_cpu_s_per_1000")), fmt(col("celery", "client_cpu_s_per_1000"))],
        ["mesh, fake Replicate over HTTP (reference)", n_ref, fmt(col("mesh_fake_replicate", "tasks_per_s")),
         fmt(col("mesh_fake_replicate", "gateway_cpu_s_per_1000")),
         fmt(col("mesh_fake_replicate", "workers_cpu_s_per_1000")),
         fmt(col("mesh_fake_replicate", "client_cpu_s_per_1000"))],
        ["mesh, local, after 10 tasks on a 2nd key (regression check)", n,
         fmt(col("mesh_local_after_second_key", "tasks_per_s")),
         fmt(col("mesh_local_after_second_key", "gateway_cpu_s_per_1000")),
         fmt(col("mesh_local_after_second_key", "workers_cpu_s_per_1000")),
         fmt(col("mesh_local_after_second_key", "client_cpu_s_per_1000"))],
    ]
    return {
        "table": {"columns": ["run", "tasks", "tasks/s", "gateway CPU-s / 1000 tasks", "workers CPU-s / 1000 tasks",
                              "client CPU-s / 1000 tasks"],
                  "rows": rows},
        "goals": [
            {"name": "mesh tasks/s (local provider)", "value": mesh_tps["median"], "target": ">= 3000",
             "met": mesh_tps["median"] >= 3000},
            {"name": "mesh / Celery throughput ratio", "value": ratio["median"], "target": "> 1",
             "met": ratio["median"] > 1},
        ],
        "plots": [{"file": "throughput.png", "kind": "bars", "title": "Throughput, 1 gateway + 2 workers (median, min–max)",
                   "ylabel": "tasks/s",
                   "bars": [{"label": "mesh (local)", **mesh_tps}, {"label": "Celery + Redis", **celery_tps},
                            {"label": "mesh (fake Replicate)", **col("mesh_fake_replicate", "tasks_per_s")}]}],
        "notes": [f"{len(runs['mesh_local'])} repetitions, mesh and Celery alternating (the fake-Replicate reference "
                  "runs afterwards on fresh processes); "
                  f"medians with [min–max]. Tasks submitted as batches of {BATCH} at once; worker capacity {CAPACITY}.",
                  "The ceiling uses the offline `local` provider (latency 0, 16×16 PNG); the fake-Replicate row goes "
                  "through real HTTP on loopback (httpx → aiohttp) and is for reference only.",
                  "Outputs travel inline here (IMAGEMESH_STORAGE_URL=none, as before storage existed); scenario 8 "
                  "runs the same ceiling with outputs in the embedded store and in S3.",
                  f"mesh/Celery ratio per repetition: {ratio['values']}",
                  f"CPU per 1 000 tasks of the whole mesh run (gateway + workers + this client + Redis): "
                  f"{fmt(spread(total, 3))} s; on {cores} cores that alone bounds the end-to-end rate at "
                  f"≈{1000 * cores / statistics.median(total):.0f} tasks/s — every process of the run shares them. "
                  f"Redis CPU-s / 1 000 tasks: {fmt(col('mesh_local', 'redis_cpu_s_per_1000'))}.",
                  "Regression check (last row): after one small batch on a second key, whose queue is empty again, "
                  "the same local load ran at about half the rate until dispatch shared credits only among queues "
                  "with work (95a28c3); it should stay near the first row. `python -m bench.repro_idle_key_queue` "
                  "reproduces the old setting."],
        "raw": runs,
    }

