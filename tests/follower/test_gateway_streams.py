"""Client streams through a real gateway process: one event follower serves them all."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from gateway.follower import READER_NAME, READS_NAME, FollowerSettings
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.follower.conftest import METADATA, api, finish, log_ids, new_batch


async def redis_clients(redis) -> int:
    return len(await redis.client_list())


async def test_300_watch_streams_share_a_few_redis_connections_and_each_gets_every_event_once(
        mesh_factory, redis, store):
    """Before: each WatchBatch held its own connection in a blocking XREAD (300 streams, ~305
    Redis clients). Now the gateway's connections stay a small constant, and every stream gets
    the whole log, in order, once: replayed (5 results already in), then live."""
    batches, per_batch, tasks = 30, 10, 12
    m = mesh_factory(IMAGEMESH_MAX_STREAMS_PER_TENANT="400")
    ids = [f"bw{i:02d}" for i in range(batches)]
    for b in ids:
        await new_batch(store, b, tasks)
        await finish(store, b, *range(5))
    before = await redis_clients(redis)
    m.start_gateway()
    idle_gateway = await redis_clients(redis) - before

    channels = [api(m.address) for _ in range(3)]
    got: dict[tuple[str, int], list[pb.BatchEvent]] = {}
    replayed = asyncio.Event()

    async def watch(b: str, n: int) -> None:
        _, stub = channels[n % len(channels)]
        events = got[(b, n)] = []
        async for e in stub.WatchBatch(pb.WatchBatchRequest(batch_id=b), metadata=METADATA):
            events.append(e)
            if sum(len(v) >= 6 for v in got.values()) == batches * per_batch:
                replayed.set()

    watchers = [asyncio.create_task(watch(b, n)) for b in ids for n in range(per_batch)]
    try:
        await asyncio.wait_for(replayed.wait(), 60)
        following = await redis_clients(redis) - before
        peak = following
        for i in range(5, tasks):  # live: one result of every batch at a time
            for b in ids:
                await finish(store, b, i)
            peak = max(peak, await redis_clients(redis) - before)
        await asyncio.wait_for(asyncio.gather(*watchers), 60)
    finally:
        for w in watchers:
            w.cancel()
        for channel, _ in channels:
            await channel.close()
    names = [c.get("name") for c in await redis.client_list()]
    print(f"Redis clients of the gateway: idle {idle_gateway}, 300 streams following {following}, peak {peak}")
    assert following - idle_gateway <= 6 and peak - idle_gateway <= 6, (idle_gateway, following, peak)
    assert names.count(READER_NAME) == 1 and names.count(READS_NAME) <= FollowerSettings().read_connections
    for b in ids:
        log = await log_ids(redis, b)
        assert len(log) == 1 + tasks + 1
        for n in range(per_batch):
            events = got[(b, n)]
            assert [e.cursor for e in events] == log, "every event once, in the log's order"
            assert events[0].HasField("accepted") and events[-1].HasField("summary")
            assert [e.result.task_index for e in events[1:-1]] == list(range(tasks))
