"""Large outputs and inputs never reach a frame or Redis, and never cost other tasks anything:
real gateway and worker processes, the fake Replicate serving a 70 MB image, an x4 enhance of a
large uploaded input."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import redis.asyncio as aioredis
from PIL import Image

from gateway.batches import batch_ref
from imagemesh.client import Client, enhance, generate
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.fakes.provider_server import FakeProviders, png
from tests.processes import ADMIN_KEY, CLIENT_KEY, OTHER_CLIENT_KEY

BIG_TOKEN = "r8_big_outputs_token_0123456789abcdefghijkl"
SMALL_TOKEN = "r8_small_outputs_token_0123456789abcdefghij"
BIG = 70 * 1024 * 1024


def provider_mesh(mesh_factory, fake_url: str, settings: dict[str, str], **extra):
    m = mesh_factory(IMAGEMESH_DEFAULT_PROVIDERS="replicate", IMAGEMESH_REPLICATE_BASE_URL=fake_url,
                     IMAGEMESH_ALLOW_PRIVATE_URLS="1", IMAGEMESH_CAPACITY="8", **settings, **extra)
    m.start_gateway()
    worker = m.start_worker()
    return m, worker


def peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


async def no_leases_left(admin: Client) -> None:
    """Every key's slots are free again and no lease (zombie or live) is left."""
    for _ in range(50):
        keys = (await admin.keys()).keys
        if all(k.in_use == 0 and not k.leases for k in keys):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"leases left: {[(k.id, k.in_use, [(lease.holder, lease.zombie) for lease in k.leases]) for k in keys]}")


async def run_both(m, big_tasks, small_tasks):
    async with Client(m.address, CLIENT_KEY) as a, Client(m.address, OTHER_CLIENT_KEY) as b:
        big, small = await asyncio.gather(
            collect(a.submit(big_tasks, credentials={"replicate": BIG_TOKEN})),
            collect(b.submit(small_tasks, credentials={"replicate": SMALL_TOKEN})))
    return big, small


async def collect(events):
    out = [e async for e in events]
    return out[0].batch_id, sorted((e.result for e in out if e.HasField("result")), key=lambda r: r.task_index)


async def test_a_70_mb_provider_output_is_streamed_into_storage_without_disturbing_other_tasks(mesh_factory, backend):
    name, settings, store = backend
    async with FakeProviders(latency=0.05) as fake:
        fake.control(token=BIG_TOKEN, output_bytes=BIG, image_size=[300, 200])
        m, worker = provider_mesh(mesh_factory, fake.url, settings)
        small_tasks = [pb.Task(output_filename=f"s{i}.png", generate=pb.GenerateSpec(prompt=f"small {i}"))
                       for i in range(20)]
        warm = [pb.Task(output_filename="warm.png", generate=pb.GenerateSpec(prompt="warm"))]
        await run_both(m, warm, warm)
        before = peak_rss_bytes(worker.proc.pid)
        big_tasks = [pb.Task(output_filename="huge.png", generate=pb.GenerateSpec(prompt="huge"))]
        (big_batch, big), (_, small) = await run_both(m, big_tasks, small_tasks)
        after = peak_rss_bytes(worker.proc.pid)
        async with Client(m.address, ADMIN_KEY) as admin:
            await no_leases_left(admin)
        async with Client(m.address, CLIENT_KEY) as a:
            got, first = 0, None
            async for chunk in a.download(big_batch, big[0].files[0].object):
                first = first if first is not None else chunk
                got += len(chunk.data)
    assert big[0].state == pb.SUCCEEDED, big[0].error.message
    huge = big[0].files[0]
    assert huge.size_bytes == BIG and huge.WhichOneof("location") != "data"
    assert (huge.width, huge.height) == (300, 200), "the size was read from the streamed body's header"
    assert got == BIG and first.data.startswith(png(300, 200))
    assert [r.state for r in small] == [pb.SUCCEEDED] * 20
    assert {r.attempts for r in big + small} == {1}, "no stream broke, nothing was re-run"
    assert after - before < 40 * 1024 * 1024, f"the worker's peak memory grew by {(after - before) >> 20} MB"
    assert await store.keys(f"team-a/{big_batch}") == [huge.object]


async def test_an_output_over_the_limit_fails_its_task_alone(mesh_factory, tmp_path):
    async with FakeProviders(latency=0.05) as fake:
        fake.control(token=BIG_TOKEN, output_bytes=BIG)
        m, _ = provider_mesh(mesh_factory, fake.url, {"IMAGEMESH_STORAGE_URL": str(tmp_path / "store")},
                             IMAGEMESH_MAX_OUTPUT_BYTES=str(10 * 1024 * 1024))
        small_tasks = [pb.Task(output_filename=f"s{i}.png", generate=pb.GenerateSpec(prompt=f"small {i}"))
                       for i in range(10)]
        (big_batch, big), (_, small) = await run_both(
            m, [pb.Task(output_filename="huge.png", generate=pb.GenerateSpec(prompt="huge"))], small_tasks)
        async with Client(m.address, ADMIN_KEY) as admin:
            await no_leases_left(admin)
    assert big[0].state == pb.FAILED and big[0].error.code == "OUTPUT_TOO_LARGE"
    assert str(10 * 1024 * 1024) in big[0].error.message and not big[0].error.retryable
    assert big[0].attempts == 1
    assert [r.state for r in small] == [pb.SUCCEEDED] * 10 and {r.attempts for r in small} == {1}
    left = [p for p in (tmp_path / "store").rglob("*") if p.is_file() and big_batch in str(p)]
    assert left == [], "no partial object is left behind"


async def test_redis_holds_metadata_only_for_megabyte_outputs(mesh_factory, tmp_path, redis_server):
    async with FakeProviders(latency=0.01) as fake:
        fake.control(output_bytes=1024 * 1024)
        m, _ = provider_mesh(mesh_factory, fake.url, {"IMAGEMESH_STORAGE_URL": str(tmp_path / "store")})
        tasks = [pb.Task(output_filename=f"mb_{i}.png", generate=pb.GenerateSpec(prompt=f"mb {i}")) for i in range(50)]
        async with Client(m.address, CLIENT_KEY) as c:
            batch_id, results = await collect(c.submit(tasks, credentials={"replicate": SMALL_TOKEN}))
    assert [r.state for r in results] == [pb.SUCCEEDED] * 50
    assert {f.size_bytes for r in results for f in r.files} == {1024 * 1024}
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        log_bytes = await r.memory_usage(f"im:{{{batch_ref('team-a', batch_id)}}}:ev")
    finally:
        await r.aclose()
    assert log_bytes / 50 < 2048, f"{log_bytes / 50:.0f} bytes of event log per 1 MB result"


def noise_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


async def test_an_x4_enhance_of_a_large_uploaded_input_does_not_disturb_other_tasks(mesh_factory, tmp_path, redis_server):
    m = mesh_factory(IMAGEMESH_CAPACITY="4", IMAGEMESH_STORAGE_URL=str(tmp_path / "store"))
    m.start_gateway()
    m.start_worker()
    m.start_worker("enhance_worker", IMAGEMESH_FALLBACK="1", IMAGEMESH_CAPACITY="2",
                   IMAGEMESH_WEIGHTS_DIR=str(tmp_path))
    photo = noise_png(1200, 900)
    assert len(photo) > 3 * 1024 * 1024
    async with Client(m.address, CLIENT_KEY) as a, Client(m.address, OTHER_CLIENT_KEY) as b:
        others = [generate(f"other {i}", f"o{i}.png", width=32, height=32) for i in range(10)]
        others.append(enhance(noise_png(40, 30), "small.png", upscale=2, restore_faces=False))
        (batch_id, big), (_, small) = await asyncio.gather(
            collect(a.submit([enhance(photo, "photo.png", upscale=4, restore_faces=False)])),
            collect(b.submit(others)))
        assert big[0].state == pb.SUCCEEDED, big[0].error.message
        out = big[0].files[0]
        first = await anext(aiter(a.download(batch_id, out.object)))
    assert (out.width, out.height) == (4800, 3600) and out.size_bytes > 8 * 1024 * 1024
    assert Image.open(io.BytesIO(first.data)).size == (4800, 3600)
    assert [r.state for r in small] == [pb.SUCCEEDED] * 11
    assert {r.attempts for r in big + small} == {1}
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        queued = [k async for k in r.scan_iter("im:q:*")]
        sizes = [await r.memory_usage(k) for k in queued]
        log_bytes = await r.memory_usage(f"im:{{{batch_ref('team-a', batch_id)}}}:ev")
    finally:
        await r.aclose()
    assert log_bytes < 16 * 1024 and max(sizes, default=0) < 64 * 1024, "the input went by reference, not in the queue"
