"""Stream sessions, cancellation, and re-attaching to a batch on another gateway."""

from __future__ import annotations

import asyncio

from imagemesh.client import Client, generate
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.processes import CLIENT_KEY


async def test_stream_session_answers_each_task_and_ends_with_summary(client):
    session = client.session()
    events = []

    async def read():
        async for event in session.events():
            events.append(event)

    reader = asyncio.create_task(read())
    for i in range(5):
        await session.add(generate(f"streamed {i}", f"s{i}.png", width=16, height=16))
        await asyncio.sleep(0.05)
    await session.close()
    await asyncio.wait_for(reader, 30)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "accepted" and kinds[-1] == "summary"
    assert sorted(e.task_accepted.task_index for e in events if e.HasField("task_accepted")) == list(range(5))
    assert sorted(e.result.task_index for e in events if e.HasField("result")) == list(range(5))
    assert events[-1].summary.succeeded == 5


async def test_cancel_batch_cancels_what_has_not_finished(mesh_factory):
    m = mesh_factory(IMAGEMESH_CAPACITY="2", IMAGEMESH_LOCAL_LATENCY_MS="2000")
    m.start_gateway()
    m.start_worker()
    async with Client(m.address, CLIENT_KEY) as c:
        events = c.submit([generate(f"slow {i}", width=16, height=16) for i in range(10)], batch_id="to-cancel")
        first = await anext(events)
        assert first.HasField("accepted")
        await asyncio.sleep(0.5)
        status = await c.cancel("to-cancel")
        assert status.cancelled == 10
        rest = [e async for e in events]
    results = [e.result for e in rest if e.HasField("result")]
    assert len(results) == 10 and {r.state for r in results} == {pb.CANCELLED}
    assert rest[-1].summary.cancelled == 10


async def test_client_that_disconnects_without_close_cancels_its_session(client):
    session = client.session()
    await session.add(generate("never finishes", width=16, height=16, latency_ms=60_000))
    events = session.events()
    first = await anext(events)
    batch_id = first.batch_id
    assert (await anext(events)).HasField("task_accepted")
    session.abort()
    for _ in range(100):
        status = await client.status(batch_id)
        if status.done:
            break
        await asyncio.sleep(0.05)
    assert status.done and status.cancelled == 1


async def test_watch_on_another_gateway_replays_then_follows(mesh_factory):
    m = mesh_factory(IMAGEMESH_CAPACITY="4")
    g1 = m.start_gateway()
    g2 = m.start_gateway()
    m.start_worker(gateway=g1)
    async with Client(g1.values["GATEWAY"], CLIENT_KEY) as c1, Client(g2.values["GATEWAY"], CLIENT_KEY) as c2:
        tasks = [generate(f"t{i}", width=16, height=16, latency_ms=100 * i) for i in range(6)]
        stream = c1.submit(tasks, batch_id="watched")
        seen = [await anext(stream) for _ in range(3)]
        replay = [e async for e in c2.watch("watched", seen[-1].cursor)]
        rest = [e async for e in stream]
    assert [e.cursor for e in replay] == [e.cursor for e in rest]
    assert replay[-1].summary.succeeded == 6
