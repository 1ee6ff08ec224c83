"""The spine: batches through a real gateway process and real generation-worker processes."""

from __future__ import annotations

import io
import time

from PIL import Image

from imagemesh.client import Client, generate
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.outputs import output_bytes
from tests.processes import CLIENT_KEY


async def collect(events):
    out = []
    async for event in events:
        out.append((time.monotonic(), event))
    return out


async def test_200_tasks_stream_back_200_distinct_decodable_images(client):
    tasks = [generate(f"a lighthouse, variant {i}", f"lighthouse_{i}.png", seed=i, width=64, height=64)
             for i in range(200)]
    started = time.monotonic()
    events = await collect(client.submit(tasks))

    kinds = [e.WhichOneof("event") for _, e in events]
    assert kinds[0] == "accepted" and kinds[-1] == "summary"
    assert len(events[0][1].accepted.task_ids) == 200
    results = [e.result for _, e in events if e.HasField("result")]
    assert len(results) == 200
    assert sorted(r.task_index for r in results) == list(range(200))
    assert {r.state for r in results} == {pb.SUCCEEDED}
    payloads = set()
    for r in results:
        assert [f.filename for f in r.files] == [f"lighthouse_{r.task_index}.png"]
        assert r.provider == "local"
        assert r.files[0].object and r.files[0].WhichOneof("location") is None, "stored, not inline"
        data = await output_bytes(client, events[0][1].batch_id, r.files[0])
        img = Image.open(io.BytesIO(data))
        img.load()
        assert img.size == (64, 64) and r.files[0].size_bytes == len(data)
        payloads.add(data)
    assert len(payloads) == 200, "every task rendered its own image"
    summary = events[-1][1].summary
    assert (summary.total, summary.succeeded, summary.failed) == (200, 200, 0)
    result_times = [t - started for t, e in events if e.HasField("result")]
    assert result_times[0] < result_times[-1] / 2, "the first result came long before the last"


async def test_results_are_streamed_as_they_finish_not_at_the_end(mesh_factory):
    m = mesh_factory(IMAGEMESH_CAPACITY="2", IMAGEMESH_LOCAL_LATENCY_MS="200")
    m.start_gateway()
    m.start_worker()
    m.start_worker()
    async with Client(m.address, CLIENT_KEY) as c:
        tasks = [generate(f"tile {i}", f"tile_{i}.png", width=32, height=32) for i in range(20)]
        events = await collect(c.submit(tasks))
    times = [t for t, e in events if e.HasField("result")]
    assert len(times) == 20
    # 4 slots x 200 ms: results arrive in about five waves over ~1 s, not in one burst.
    spread = times[-1] - times[0]
    assert spread >= 0.6, f"results arrived within {spread:.3f}s: not streamed"
    waves = {round((t - times[0]) / 0.2) for t in times}
    assert len(waves) >= 4


async def test_caller_filenames_are_sanitised_and_multi_outputs_numbered(client):
    tasks = [generate("x", "../../etc/passwd.png", width=16, height=16),
             generate("y", "dir/sub/name", width=16, height=16, num_outputs=3),
             generate("z", "", width=16, height=16)]
    events = await collect(client.submit(tasks))
    by_index = {e.result.task_index: e.result for _, e in events if e.HasField("result")}
    assert [f.filename for f in by_index[0].files] == ["passwd.png"]
    assert [f.filename for f in by_index[1].files] == ["name_1.png", "name_2.png", "name_3.png"]
    assert [f.filename for f in by_index[2].files] == ["task_2.png"]


async def test_one_bad_task_fails_alone(client):
    tasks = [generate("fine", "a.png", width=16, height=16),
             generate("p" * 5000, "b.png"),
             generate("bad provider", "c.png", providers=["nope"]),
             generate("too many", "d.png", num_outputs=50)]
    events = await collect(client.submit(tasks))
    results = {e.result.task_index: e.result for _, e in events if e.HasField("result")}
    assert results[0].state == pb.SUCCEEDED
    assert results[1].state == pb.FAILED and results[1].error.code == "INVALID_INPUT"
    assert "prompt" in results[1].error.message and "4000" in results[1].error.message
    assert "unknown provider 'nope'" in results[2].error.message
    assert "num_outputs" in results[3].error.message and "1..8" in results[3].error.message
    assert events[-1][1].summary.failed == 3
