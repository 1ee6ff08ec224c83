"""The enhance engine on the real networks (random weights, CPU): sizes, formats, failures, the loop."""

from __future__ import annotations

import asyncio
import io
import time

import pytest
from aiohttp import web
from PIL import Image

from enhance_worker.engine import EnhanceEngine
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.enhance.conftest import assignment, image_bytes, settings

pytestmark = pytest.mark.enhance


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


async def test_real_esrgan_output_is_input_times_upscale(engine):
    for (w, h), upscale in (((64, 64), 2), ((48, 40), 4)):
        result = await engine.run(assignment(image=image_bytes(w, h), upscale=upscale))
        assert result.state == pb.SUCCEEDED, result.error.message
        (out,) = result.files
        assert (out.width, out.height) == (w * upscale, h * upscale) == size_of(out.data)
        assert result.model == f"RealESRGAN_x{upscale}plus (RANDOM weights)"
        assert result.device == "cpu"
        assert (result.task_id, result.fence, result.attempt_id) == ("task-1", 42, "task-1#1")


async def test_upscale_1_without_faces_keeps_the_size_and_0_means_2(engine):
    same = await engine.run(assignment(image=image_bytes(40, 30), upscale=1))
    assert (same.files[0].width, same.files[0].height) == (40, 30)
    default = await engine.run(assignment(image=image_bytes(40, 30)))
    assert (default.files[0].width, default.files[0].height) == (80, 60)


async def test_restore_faces_on_the_center_face_with_background_upscaling(engine):
    started = time.monotonic()
    result = await engine.run(assignment(image=image_bytes(128, 128), upscale=2, restore_faces=True,
                                         only_center_face=True, fidelity=0.3))
    assert result.state == pb.SUCCEEDED, result.error.message
    assert (result.files[0].width, result.files[0].height) == (256, 256)
    assert result.model == "GFPGANv1.4+RealESRGAN_x2plus (RANDOM weights)"
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("fmt, content_type, magic", [
    ("png", "image/png", b"\x89PNG"), ("jpg", "image/jpeg", b"\xff\xd8\xff"), ("webp", "image/webp", b"RIFF")])
async def test_output_format_is_honoured_and_the_extension_fixed(fallback_engine, fmt, content_type, magic):
    result = await fallback_engine.run(assignment(image=image_bytes(20, 10), upscale=2, output_format=fmt,
                                                  name="holiday.png"))
    (out,) = result.files
    assert out.content_type == content_type and out.data.startswith(magic)
    assert out.filename == f"holiday.{fmt}"
    assert size_of(out.data) == (40, 20)


async def test_corrupt_input_fails_alone_and_the_engine_keeps_working(engine):
    good = image_bytes(32, 32)
    for bad in (b"", b"not an image at all", good[: len(good) // 2], b"\x89PNG\r\n\x1a\n" + b"\0" * 64):
        result = await engine.run(assignment(image=bad, upscale=2))
        assert result.state == pb.FAILED
        assert result.error.code == "INVALID_INPUT" and not result.error.retryable
        assert not result.files
    after = await engine.run(assignment(image=good, upscale=2))
    assert after.state == pb.SUCCEEDED and after.files[0].width == 64


async def test_oversize_input_is_refused_naming_the_limit(engine):
    # 4,200 x 4,200 = 17.6 MP > 16 MP; a flat image compresses to a few kB.
    buf = io.BytesIO()
    Image.new("RGB", (4200, 4200)).save(buf, "PNG")
    result = await engine.run(assignment(image=buf.getvalue(), upscale=2))
    assert result.state == pb.FAILED and result.error.code == "INVALID_INPUT"
    assert "over the limit of 16 megapixels" in result.error.message
    buf = io.BytesIO()
    Image.new("RGB", (9000, 8)).save(buf, "PNG")
    result = await engine.run(assignment(image=buf.getvalue(), upscale=2))
    assert "over the limit of 8192 pixels" in result.error.message


async def test_bad_spec_fields_fail_with_the_field_named(fallback_engine):
    result = await fallback_engine.run(assignment(image=image_bytes(8, 8), upscale=3))
    assert result.error.code == "INVALID_INPUT" and "upscale" in result.error.message
    result = await fallback_engine.run(assignment(image=image_bytes(8, 8), output_format="gif"))
    assert result.error.code == "INVALID_INPUT" and "output_format" in result.error.message


async def test_fallback_results_are_labelled(fallback_engine):
    result = await fallback_engine.run(assignment(image=image_bytes(30, 20), upscale=4, restore_faces=True))
    assert result.state == pb.SUCCEEDED
    assert result.model == "lanczos-fallback" and fallback_engine.model_name == "lanczos-fallback"
    assert (result.files[0].width, result.files[0].height) == (120, 80)


async def test_inference_does_not_block_the_event_loop(engine):
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker():
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    started = time.perf_counter()
    result = await engine.run(assignment(image=image_bytes(96, 96), upscale=4))
    took = time.perf_counter() - started
    stop.set()
    await ticking
    assert result.state == pb.SUCCEEDED
    assert took > 0.5  # a real inference happened meanwhile
    assert len(gaps) >= took / 0.01 * 0.3
    assert max(gaps) < 0.25, f"the loop stalled for {max(gaps):.2f}s"


async def test_a_cancelled_image_stops_at_the_next_tile_and_frees_its_admission(random_weights):
    # Tiny tiles: many forward passes, so the stop flag is seen soon after the cancel.
    eng = await EnhanceEngine.create(settings(random_weights, tile_cost=0.004))
    try:
        task = asyncio.create_task(eng.run(assignment(image=image_bytes(192, 192), upscale=2)))
        while eng.budget.in_use == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        task.cancel()
        cancelled_at = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = cancelled_at + 10
        while eng.budget.in_use > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # 36 tiles take ~3 s here; the thread let go after one more tile.
        assert eng.budget.in_use == 0 and eng.budget.holders == 0
        assert time.monotonic() - cancelled_at < 1.0
        result = await eng.run(assignment(image=image_bytes(16, 16), upscale=2))
        assert result.state == pb.SUCCEEDED
    finally:
        await eng.close()


async def test_admission_holds_work_beyond_the_cost_budget(tmp_path):
    # Budget 0.02 MP·scale²: one 64² ×2 image (0.016) at a time.
    eng = await EnhanceEngine.create(settings(tmp_path, fallback=True, cost_budget=0.02))
    try:
        peak = 0.0
        results = []

        async def one(i):
            results.append(await eng.run(assignment(image=image_bytes(64, 64, seed=i), upscale=2, attempt=i)))

        async def watch():
            nonlocal peak
            while True:
                peak = max(peak, eng.budget.in_use)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(one(i) for i in range(4)))
        watcher.cancel()
        assert all(r.state == pb.SUCCEEDED for r in results)
        assert 0 < peak <= 0.02
    finally:
        await eng.close()


@pytest.fixture
async def image_site():
    app = web.Application()
    photo = image_bytes(24, 16, "JPEG")

    async def serve(request):
        return web.Response(body=photo, content_type="image/jpeg")

    app.router.add_get("/photo.jpg", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_image_url_is_fetched_through_the_url_guard(image_site, tmp_path):
    eng = await EnhanceEngine.create(settings(tmp_path, fallback=True, allow_private_urls=True))
    guarded = await EnhanceEngine.create(settings(tmp_path, fallback=True))
    try:
        ok = await eng.run(assignment(image_url=f"{image_site}/photo.jpg", upscale=2))
        assert ok.state == pb.SUCCEEDED and (ok.files[0].width, ok.files[0].height) == (48, 32)
        missing = await eng.run(assignment(image_url=f"{image_site}/nope.jpg", upscale=2))
        assert missing.error.code == "INVALID_INPUT" and "404" in missing.error.message
        refused = await guarded.run(assignment(image_url=f"{image_site}/photo.jpg", upscale=2))
        assert refused.error.code == "INVALID_INPUT" and "non-public address" in refused.error.message
    finally:
        await eng.close()
        await guarded.close()


async def test_then_enhance_inputs_each_become_one_file(fallback_engine):
    inputs = [pb.OutputFile(filename="cat_1.jpg", data=image_bytes(10, 10, "JPEG"), content_type="image/jpeg"),
              pb.OutputFile(filename="cat_2.jpg", data=image_bytes(12, 10, "JPEG"), content_type="image/jpeg")]
    result = await fallback_engine.run(assignment(pb.EnhanceSpec(upscale=2, output_format="png"),
                                                  name="cat.jpg", inputs=inputs))
    assert result.state == pb.SUCCEEDED
    assert [(f.filename, f.width) for f in result.files] == [("cat_1.png", 20), ("cat_2.png", 24)]
