"""Measurement (not a benchmark scenario): what client event streams cost a gateway.

    python -m bench.event_streams        (about a minute; run it in two checkouts to compare)

1. One SubmitBatch stream: 5,000 local-provider tasks (IMAGEMESH_STORAGE_URL=none, 2 workers of
   capacity 64): gateway CPU per 1,000 tasks, from submit to summary (dispatch included); then
   the finished batch replayed with WatchBatch three times: gateway CPU per 1,000 events (the
   event path alone; median).
2. 300 WatchBatch streams (30 batches × 10 watchers, results written straight through the batch
   scripts): the gateway's Redis clients, its CPU and Redis's commands per second while they
   all wait, and gateway CPU per 1,000 live deliveries (50 results per batch).

Gateway CPU is user + system time from /proc (psutil) over each phase. Only APIs that main had
before the event follower are used, so the same file runs on either side.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import grpc
import psutil
import redis.asyncio as aioredis

from gateway.batches import BatchStore, NewTask, task_id
from imagemesh.client import Client, generate
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import imagemesh_pb2_grpc as pb_grpc
from tests.conftest import RedisServer
from tests.processes import CLIENT_KEY, Mesh

SETTINGS = {"IMAGEMESH_STORAGE_URL": "none", "IMAGEMESH_LOG_LEVEL": "WARNING", "IMAGEMESH_MAX_BATCH_TASKS": "5000",
            "IMAGEMESH_CAPACITY": "64", "IMAGEMESH_MAX_STREAMS_PER_TENANT": "1000"}


def cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


async def one_stream(m: Mesh, pid: int, n: int = 5000) -> dict:
    async with Client(m.address, CLIENT_KEY) as c:
        [e async for e in c.submit([generate(f"w{i}", width=16, height=16) for i in range(200)])]  # warm-up
        c0 = cpu(pid)
        events = [e async for e in c.submit([generate(f"t{i}", width=16, height=16) for i in range(n)])]
        submit = (cpu(pid) - c0) / n * 1000
        assert sum(e.HasField("result") for e in events) == n
        replays = []
        for _ in range(3):
            c0 = cpu(pid)
            assert len([e async for e in c.watch(events[0].batch_id)]) == n + 2
            replays.append((cpu(pid) - c0) / n * 1000)
    return {"submit_cpu_s_per_1000_tasks": round(submit, 3),
            "replay_cpu_s_per_1000_events": round(sorted(replays)[1], 3)}


async def many_watchers(m: Mesh, pid: int, r: aioredis.Redis, batches: int = 30, watchers: int = 10,
                        tasks: int = 50) -> dict:
    store = BatchStore(r)
    ids = [f"bw{i}" for i in range(batches)]
    for b in ids:
        await store.reserve(b, "team-a", tasks, writer="w")
        await store.write_records(b, [NewTask(i, f"t{i}.png") for i in range(tasks)])
        await store.commit(b, "w", pb.Accepted(batch_id=b, task_ids=[task_id(b, i) for i in range(tasks)]))
    channels = [grpc.aio.insecure_channel(m.address) for _ in range(3)]
    metadata = (("authorization", f"Bearer {CLIENT_KEY}"),)
    seen: dict[tuple[str, int], int] = {}
    all_open = asyncio.Event()

    async def watch(b: str, n: int) -> None:
        seen[(b, n)] = 0
        stub = pb_grpc.ImageMeshStub(channels[n % len(channels)])
        async for _ in stub.WatchBatch(pb.WatchBatchRequest(batch_id=b), metadata=metadata):
            seen[(b, n)] += 1
            if sum(1 for v in seen.values() if v) == batches * watchers:
                all_open.set()

    running = [asyncio.create_task(watch(b, n)) for b in ids for n in range(watchers)]
    try:
        await asyncio.wait_for(all_open.wait(), 60)
        await asyncio.sleep(2)
        c0 = cpu(pid)
        await asyncio.sleep(10)
        idle_cpu = (cpu(pid) - c0) / 10
        n0 = (await r.info("stats"))["total_commands_processed"]
        await asyncio.sleep(5)
        idle_cmds = ((await r.info("stats"))["total_commands_processed"] - n0) / 5
        clients = len(await r.client_list()) - 1  # not this script's own
        c0 = cpu(pid)
        for i in range(0, tasks, 5):
            for b in ids:
                await store.finish_many([(b, k, "*", pb.TaskResult(task_index=k, task_id=task_id(b, k),
                                                                   state=pb.SUCCEEDED), False)
                                         for k in range(i, i + 5)])
            await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.gather(*running), 120)
        live = (cpu(pid) - c0) / (batches * watchers * tasks) * 1000
    finally:
        for t in running:
            t.cancel()
        for ch in channels:
            await ch.close()
    return {"watchers": batches * watchers, "redis_clients": clients, "idle_cpu_percent": round(idle_cpu * 100, 1),
            "idle_redis_commands_per_s": round(idle_cmds, 1), "live_cpu_s_per_1000_deliveries": round(live, 3)}


async def main() -> None:
    d = Path(tempfile.mkdtemp(prefix="event-streams-"))
    server = RedisServer(d)
    server.start()
    r = aioredis.Redis.from_url(server.url)
    try:
        m = Mesh(server.url, d, **SETTINGS)
        try:
            gateway = m.start_gateway()
            m.start_worker()
            m.start_worker()
            await asyncio.sleep(2)
            out = await one_stream(m, gateway.proc.pid)
        finally:
            m.close()
        await r.flushall()
        m = Mesh(server.url, d, **SETTINGS)
        try:
            gateway = m.start_gateway()
            time.sleep(1)
            out |= await many_watchers(m, gateway.proc.pid, r)
        finally:
            m.close()
    finally:
        await r.aclose()
        server.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
