"""Scenario 8 — image bytes off the control plane: what storing every output costs, and what it saves.

1. The throughput ceiling of scenario 1 (offline `local` provider, 16×16 PNGs, 1 gateway + 2
   generation workers, no key limit) with outputs inline as before storage existed
   (`IMAGEMESH_STORAGE_URL=none`), in the embedded directory store, and in S3 (a SeaweedFS
   server on this machine, presigned PUTs from the workers). Fresh processes for each run, the
   three alternating; medians of the repetitions. The S3 server's own CPU is counted apart.
2. Redis memory per result, with 1 000 results of 1 MB each (the fake Replicate serving 1 MB
   PNGs, copied into the embedded store): `used_memory` growth over the run and the event log's
   `MEMORY USAGE`, per result. Before storage, each such result held its megabyte in the log.
3. Enhance through the mesh (gateway + 1 enhance worker, the labelled `lanczos-fallback` model:
   this measures the transport and storage path, not GFPGAN): 512² → ×2 tasks with each backend,
   and one ×4 of a 1200×900 input uploaded first (a 17 MP output, tens of MB: before storage it
   killed the worker's stream).
"""

from __future__ import annotations

import asyncio
import io
import secrets
import statistics
import time

import numpy as np
import redis.asyncio as aioredis
from PIL import Image

from bench import rig as R
from bench.measure import cpu_seconds, fmt, spread
from bench.traffic import local_tasks, replicate_tasks, run_batches, tally
from gateway.batches import batch_ref
from imagemesh.client import Client, enhance
from imagemesh.v1 import imagemesh_pb2 as pb

TITLE = "Storage: the ceiling with outputs stored (embedded, S3) vs inline; Redis per result; enhance via the mesh"
BUDGET_S = 600
BATCH = 1000
CAPACITY = "32"
BACKENDS = ("none", "directory", "s3")
ENHANCE_BATCH = 8  # 8 noise PNGs of 512² (0.8 MB each) fit one request


def _settings(backend: str, rig: R.Rig, seaweed, name: str) -> dict[str, str]:
    if backend == "none":
        return {"IMAGEMESH_STORAGE_URL": "none"}
    if backend == "directory":
        return {"IMAGEMESH_STORAGE_URL": str(rig.log_dir(name) / f"store-{secrets.token_hex(3)}")}
    from tests.storage.seaweed import ACCESS_KEY, SECRET_KEY

    return {"IMAGEMESH_STORAGE_URL": f"s3://imagemesh-bench/{name}-{secrets.token_hex(3)}",
            "IMAGEMESH_STORAGE_ENDPOINT": seaweed.endpoint, "IMAGEMESH_STORAGE_ACCESS_KEY_ID": ACCESS_KEY,
            "IMAGEMESH_STORAGE_SECRET_ACCESS_KEY": SECRET_KEY}


async def _ceiling_run(m, n: int, prefix: str, weed_pid: int | None) -> dict:
    gw, workers = m.gateways[0].proc.pid, [w.proc.pid for w in m.workers]
    batches = [local_tasks(min(BATCH, n - i), prefix=f"{prefix}{i}-") for i in range(0, n, BATCH)]
    cpu = {"gateway": cpu_seconds(gw), "workers": sum(cpu_seconds(p) for p in workers),
           "store": cpu_seconds(weed_pid) if weed_pid else 0.0}
    outcomes, wall = await run_batches(m.address, R.CLIENT_KEY, batches)
    t = tally(outcomes)
    if t["states"].get("SUCCEEDED", 0) != n:
        raise RuntimeError(f"ceiling run: {t}")
    return {"tasks_per_s": n / wall,
            "gateway_cpu_s_per_1000": 1000 * (cpu_seconds(gw) - cpu["gateway"]) / n,
            "workers_cpu_s_per_1000": 1000 * (sum(cpu_seconds(p) for p in workers) - cpu["workers"]) / n,
            "store_cpu_s_per_1000": 1000 * ((cpu_seconds(weed_pid) if weed_pid else 0.0) - cpu["store"]) / n}


async def ceiling(rig: R.Rig, seaweed, n: int, reps: int) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {b: [] for b in BACKENDS}
    for rep in range(reps):
        for backend in BACKENDS:
            settings = _settings(backend, rig, seaweed, "ceiling")
            async with R.started_mesh(rig, f"storage_{backend}", workers=2, IMAGEMESH_KEY_LIMITS="local=0",
                                      worker_settings={"IMAGEMESH_CAPACITY": CAPACITY}, **settings) as m:
                await _ceiling_run(m, 500, "w", None)  # warm-up: connections, imports, caches
                weed = seaweed.proc.pid if backend == "s3" else None
                runs[backend].append(await _ceiling_run(m, n, f"c{rep}", weed))
    return runs


async def redis_per_result(rig: R.Rig, n: int) -> dict:
    with R.FakeProvider(latency=0.0) as fake:
        fake.control(output_bytes=1024 * 1024)
        settings = _settings("directory", rig, None, "storage_redis")
        async with R.started_mesh(rig, "storage_redis", workers=2, IMAGEMESH_KEY_LIMITS="replicate=0",
                                  worker_settings={"IMAGEMESH_CAPACITY": "16", "IMAGEMESH_REPLICATE_BASE_URL": fake.url,
                                                   "IMAGEMESH_ALLOW_PRIVATE_URLS": "1"}, **settings) as m:
            r = aioredis.Redis.from_url(rig.redis_url)
            try:
                await run_batches(m.address, R.CLIENT_KEY, [replicate_tasks(20, prefix="w")],
                                  credentials={"replicate": "tok"})
                before = (await r.info("memory"))["used_memory"]
                batches = [replicate_tasks(min(BATCH, n - i), prefix=f"m{i}-") for i in range(0, n, BATCH)]
                outcomes, wall = await run_batches(m.address, R.CLIENT_KEY, batches, credentials={"replicate": "tok"})
                t = tally(outcomes)
                if t["states"].get("SUCCEEDED", 0) != n:
                    raise RuntimeError(f"1 MB outputs: {t}")
                after = (await r.info("memory"))["used_memory"]
                log_bytes = sum([await r.memory_usage(f"im:{{{batch_ref('team-a', o.batch_id)}}}:ev") or 0 for o in outcomes])
            finally:
                await r.aclose()
    return {"results": n, "output_bytes": 1024 * 1024, "wall_s": wall,
            "used_memory_growth_per_result": (after - before) / n, "event_log_bytes_per_result": log_bytes / n,
            "stored_mb_per_s": n / wall}


def _noise_png(width: int, height: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


async def enhance_through_mesh(rig: R.Rig, seaweed, n: int) -> dict:
    small = _noise_png(512, 512)
    large = _noise_png(1200, 900, seed=1)
    out: dict[str, dict] = {}
    for backend in BACKENDS:
        settings = _settings(backend, rig, seaweed, "storage_enhance")
        if backend == "none":
            settings["IMAGEMESH_INLINE_MAX_BYTES"] = str(8 * 1024 * 1024)
        async with R.started_mesh(rig, f"storage_enhance_{backend}", workers=0, **settings) as m:
            await asyncio.to_thread(m.start_worker, "enhance_worker", IMAGEMESH_FALLBACK="1", IMAGEMESH_CAPACITY="2",
                                    IMAGEMESH_WEIGHTS_DIR=str(rig.log_dir("storage_enhance")))
            await R.wait_for_workers(m, 1)
            async with Client(m.address, R.CLIENT_KEY) as c:
                # Batches of ENHANCE_BATCH at once: without storage the images ride inside the
                # request, and all of them together would pass the 16 MiB message limit.
                latencies, states = [], []

                async def one(first: int) -> None:
                    tasks = [enhance(small, f"e{i}.png", upscale=2, restore_faces=False, output_format="jpg")
                             for i in range(first, min(n, first + ENHANCE_BATCH))]
                    async for e in c.submit(tasks):
                        if e.HasField("result"):
                            latencies.append(e.result.timings.total_ms / 1000)
                            states.append(e.result.state)
                t0 = time.perf_counter()
                await asyncio.gather(*(one(k) for k in range(0, n, ENHANCE_BATCH)))
                wall = time.perf_counter() - t0
                row = {"tasks_per_s": n / wall, "p50_s": statistics.median(latencies),
                       "succeeded": sum(s == pb.SUCCEEDED for s in states)}
                if backend != "none":
                    t0 = time.perf_counter()
                    events = [e async for e in c.submit([enhance(large, "big.png", upscale=4, restore_faces=False)])]
                    r = next(e.result for e in events if e.HasField("result"))
                    row["x4_1200x900_s"] = time.perf_counter() - t0
                    row["x4_state"] = pb.TaskState.Name(r.state)
                    row["x4_output_mb"] = sum(f.size_bytes for f in r.files) / 2**20
                    row["x4_attempts"] = r.attempts
            out[backend] = row
    return out


async def run(rig: R.Rig) -> dict:
    from tests.storage.seaweed import SeaweedFS

    n = 3000 if rig.quick else 10000
    reps = 1 if rig.quick else 3
    n_mb = 200 if rig.quick else 1000
    n_enhance = 8 if rig.quick else 24
    seaweed = SeaweedFS(rig.log_dir("seaweedfs"))
    await asyncio.to_thread(seaweed.start)
    try:
        await asyncio.to_thread(seaweed.create_bucket, "imagemesh-bench")
        runs = await ceiling(rig, seaweed, n, reps)
        memory = await redis_per_result(rig, n_mb)
        enhanced = await enhance_through_mesh(rig, seaweed, n_enhance)
    finally:
        await asyncio.to_thread(seaweed.stop)
    return summarize(runs, memory, enhanced, n, reps)


def summarize(runs: dict[str, list[dict]], memory: dict, enhanced: dict, n: int, reps: int) -> dict:
    def col(backend: str, field: str) -> dict:
        return spread([r[field] for r in runs[backend]], 3)

    names = {"none": "inline (storage none, as before)", "directory": "embedded directory store",
             "s3": "S3 (SeaweedFS here, presigned PUT)"}
    rows = [[f"ceiling, {names[b]}", n, fmt(col(b, "tasks_per_s")), fmt(col(b, "gateway_cpu_s_per_1000")),
             fmt(col(b, "workers_cpu_s_per_1000")), fmt(col(b, "store_cpu_s_per_1000")) if b == "s3" else "—"]
            for b in BACKENDS]
    base = col("none", "tasks_per_s")["median"]
    enhance_rows = [[f"enhance 512² ×2 jpg via the mesh, {names[b]}", enhanced[b]["succeeded"],
                     f"{enhanced[b]['tasks_per_s']:.2f}", f"p50 {enhanced[b]['p50_s']:.2f} s", "—", "—"]
                    for b in BACKENDS]
    for b in ("directory", "s3"):
        e = enhanced[b]
        enhance_rows.append([f"enhance 1200×900 ×4 png (uploaded input), {names[b]}", 1, "—",
                             f"{e['x4_1200x900_s']:.1f} s, {e['x4_state']}, {e['x4_output_mb']:.0f} MB, "
                             f"attempts {e['x4_attempts']}", "—", "—"])
    return {
        "table": {"columns": ["run", "tasks", "tasks/s", "gateway CPU-s / 1000 (or result)", "workers CPU-s / 1000",
                              "S3 server CPU-s / 1000"],
                  "rows": rows + enhance_rows + [
                      [f"Redis per 1 MB result ({memory['results']} results, embedded store)", memory["results"],
                       f"{memory['stored_mb_per_s']:.0f} MB/s stored",
                       f"used_memory +{memory['used_memory_growth_per_result']:.0f} B/result",
                       f"event log {memory['event_log_bytes_per_result']:.0f} B/result", "—"]]},
        "goals": [
            {"name": "Redis growth per 1 MB result (metadata only)", "value": round(memory["used_memory_growth_per_result"]),
             "target": "< 4096 bytes", "met": memory["used_memory_growth_per_result"] < 4096},
            {"name": "x4 enhance of a large input through the mesh, attempts", "value": enhanced["directory"]["x4_attempts"],
             "target": "1 (no stream lost)", "met": enhanced["directory"]["x4_attempts"] == 1
             and enhanced["s3"]["x4_attempts"] == 1},
        ],
        "notes": [f"{reps} repetition(s) of the ceiling, backends alternating on fresh processes; medians [min–max]. "
                  f"Ceiling relative to inline: embedded {col('directory', 'tasks_per_s')['median'] / base:.2f}×, "
                  f"S3 {col('s3', 'tasks_per_s')['median'] / base:.2f}×.",
                  "Every stored output costs one more call: a PutObject stream to the gateway (embedded) or an HTTP "
                  "PUT to the store (S3), each with its own per-call CPU; with 16×16 outputs that call is the whole "
                  "difference. The SeaweedFS server shares the same 2 cores.",
                  "Redis: `used_memory` growth over the run divided by the results (task records, event log, "
                  "queue entries, the storage index) and the event logs' MEMORY USAGE alone; before storage each "
                  "1 MB output sat in the event log (≈1 MB per result).",
                  "Enhance via the mesh uses the labelled lanczos-fallback model (the transport and storage path, "
                  "not GFPGAN); scenario 6 measures the models."],
        "raw": {"ceiling": runs, "redis": memory, "enhance": enhanced},
    }
