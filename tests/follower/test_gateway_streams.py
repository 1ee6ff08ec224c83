"""Client streams through a real gateway process: one event follower serves them all."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from gateway.follower import READER_NAME, READS_NAME, FollowerSettings
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.follower.conftest import METADATA, api, finish, log_ids, new_batch, ref
from tests.processes import OTHER_CLIENT_KEY


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
        await new_batch(store, ref(b), tasks)
        await finish(store, ref(b), *range(5))
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
                await finish(store, ref(b), i)
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
        log = await log_ids(redis, ref(b))
        assert len(log) == 1 + tasks + 1
        for n in range(per_batch):
            events = got[(b, n)]
            assert [e.cursor for e in events] == log, "every event once, in the log's order"
            assert events[0].HasField("accepted") and events[-1].HasField("summary")
            assert [e.result.task_index for e in events[1:-1]] == list(range(tasks))


async def test_open_streams_are_capped_per_tenant_and_per_gateway(mesh_factory, redis, store):
    """Past IMAGEMESH_MAX_STREAMS_PER_TENANT (2) a tenant's new stream of any kind is refused with
    RESOURCE_EXHAUSTED, a retry hint and the limit named, and a refused SubmitBatch submits
    nothing; another tenant still gets streams, up to the gateway's IMAGEMESH_MAX_STREAMS (3).
    A stream that ends frees its place."""
    m = mesh_factory(IMAGEMESH_MAX_STREAMS_PER_TENANT="2", IMAGEMESH_MAX_STREAMS="3")
    await new_batch(store, ref("bcap"), 2)
    await new_batch(store, ref("bcap-b", "team-b"), 2, tenant="team-b")
    m.start_gateway()
    channel, stub = api(m.address)
    other = (("authorization", f"Bearer {OTHER_CLIENT_KEY}"),)

    def watch(batch_id: str = "bcap", metadata=METADATA):
        return stub.WatchBatch(pb.WatchBatchRequest(batch_id=batch_id), metadata=metadata)

    async def refused(call, limit: str) -> None:
        async def drain():
            async for _ in call:
                pass
        with pytest.raises(grpc.aio.AioRpcError) as err:
            try:
                await asyncio.wait_for(drain(), 10)
            except asyncio.TimeoutError:
                call.cancel()
                raise AssertionError("the stream was not refused") from None
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert limit in err.value.details(), err.value.details()
        assert int(dict(err.value.trailing_metadata())["retry-after-ms"]) > 0

    try:
        held = [watch(), watch()]
        for call in held:
            assert (await anext(aiter(call))).HasField("accepted")
        batches = await redis.keys("im:*:meta")
        await refused(watch(), "the limit is 2 (IMAGEMESH_MAX_STREAMS_PER_TENANT)")
        await refused(stub.SubmitBatch(pb.SubmitBatchRequest(tasks=[pb.Task(generate=pb.GenerateSpec(prompt="x"))]),
                                       metadata=METADATA), "IMAGEMESH_MAX_STREAMS_PER_TENANT")

        async def opening():
            yield pb.StreamRequest(open=pb.StreamOpen())
        await refused(stub.Stream(opening(), metadata=METADATA), "IMAGEMESH_MAX_STREAMS_PER_TENANT")
        assert sorted(await redis.keys("im:*:meta")) == sorted(batches), "a refused SubmitBatch submits nothing"

        theirs = watch("bcap-b", other)
        assert (await anext(aiter(theirs))).HasField("accepted"), "another tenant is not held back"
        await refused(watch("bcap-b", other), "its limit is 3 (IMAGEMESH_MAX_STREAMS)")

        held.pop().cancel()
        deadline = time.monotonic() + 5
        while True:
            again = watch()
            try:
                assert (await anext(aiter(again))).HasField("accepted")
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
                await asyncio.sleep(0.1)
        again.cancel()
    finally:
        await channel.close()


async def test_streams_that_end_leave_nothing_followed_or_counted(gateway, store):
    """Clients that go away mid-stream, a stream that reads to its summary, and a refused one:
    afterwards the follower reads no batch and holds no subscriber, and no stream is counted."""
    for b in ("bg0", "bg1", "bg2"):
        await new_batch(store, ref(b), 2)
    await finish(store, ref("bg2"), 0, 1)
    channel, stub = api(f"127.0.0.1:{gateway.port}")
    try:
        calls = [stub.WatchBatch(pb.WatchBatchRequest(batch_id=b), metadata=METADATA)
                 for b in ("bg0", "bg1") for _ in range(10)]
        for call in calls:
            assert (await anext(aiter(call))).HasField("accepted")
        assert (gateway.follower.followed, gateway.follower.subscribers) == (2, 20)
        done = [e async for e in stub.WatchBatch(pb.WatchBatchRequest(batch_id="bg2"), metadata=METADATA)]
        assert done[-1].HasField("summary")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await anext(aiter(stub.WatchBatch(pb.WatchBatchRequest(batch_id="bg0", after_cursor="x"),
                                              metadata=METADATA)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for call in calls:
            call.cancel()
        deadline = time.monotonic() + 5
        while gateway.follower.subscribers and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert (gateway.follower.followed, gateway.follower.subscribers) == (0, 0)
        while gateway.streams.open() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert gateway.streams.open() == 0
    finally:
        await channel.close()
