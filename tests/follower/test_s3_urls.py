"""With S3 storage the event log keeps only references; the follower's streams still hand each
client presigned URLs signed when the event reaches it, live and replayed alike."""

from __future__ import annotations

import asyncio
import time

import httpx

from gateway.batches import batch_ref
from gen_worker.providers.local import render
from imagemesh.client import Client, generate
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.processes import CLIENT_KEY
from tests.storage.conftest import s3_settings


async def test_results_followed_live_and_replayed_get_urls_signed_as_they_are_sent(mesh_factory, seaweed, redis):
    m = mesh_factory(IMAGEMESH_CAPACITY="4", IMAGEMESH_STORAGE_URL_TTL="30", **s3_settings(seaweed, "follow"))
    m.start_gateway()
    m.start_worker()
    tasks = [generate(f"a crane {i}", f"crane{i}.png", seed=i, width=32, height=32, latency_ms=1500) for i in range(2)]
    async with Client(m.address, CLIENT_KEY) as c, httpx.AsyncClient() as http:
        submitted = c.submit(tasks)
        accepted = await anext(submitted)
        batch_id = accepted.batch_id
        live = asyncio.create_task(_collect(c.watch(batch_id)))  # follows before any result is in
        mine = [e async for e in submitted]
        watched = await asyncio.wait_for(live, 30)
        await asyncio.sleep(1.1)
        replayed = [e async for e in c.watch(batch_id)]
        stored = [pb.TaskResult.FromString(fields[b"d"]) for _, fields in await redis.xrange(f"im:{{{batch_ref('team-a', batch_id)}}}:ev")
                  if fields[b"k"] == b"result"]
        assert stored and all(f.object and not f.url for r in stored for f in r.files), "the log holds references"
        for events in (mine, watched, replayed):
            results = sorted((e.result for e in events if e.HasField("result")), key=lambda r: r.task_index)
            assert [r.state for r in results] == [pb.SUCCEEDED] * 2
            for r in results:
                f = r.files[0]
                assert f.object and f.url
                response = await http.get(f.url)
                assert response.status_code == 200 and response.content == render(f"a crane {r.task_index}",
                                                                                   r.task_index, 32, 32)
        first = next(e.result for e in watched if e.HasField("result")).files[0]
        again = next(e.result for e in replayed if e.HasField("result") and e.result.files[0].object == first.object
                     ).files[0]
        assert again.url_expires_at_ms >= first.url_expires_at_ms + 1000, "signed again when replayed"
        assert abs(again.url_expires_at_ms - (time.time() + 30) * 1000) < 2000
        assert [e.SerializeToString() for e in replayed if not e.HasField("result")] == \
               [e.SerializeToString() for e in watched if not e.HasField("result")]


async def _collect(events) -> list[pb.BatchEvent]:
    return [e async for e in events]
