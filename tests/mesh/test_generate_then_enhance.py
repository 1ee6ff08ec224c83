"""generate → then_enhance, and enhance tasks, through real gateway and worker processes."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from imagemesh.client import Client, enhance, generate
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.outputs import output_bytes
from tests.processes import CLIENT_KEY


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


async def test_then_enhance_sends_each_generated_output_through_the_enhance_pool(mesh_factory, tmp_path):
    m = mesh_factory(IMAGEMESH_CAPACITY="4")
    m.start_gateway()
    m.start_worker()
    m.start_worker("enhance_worker", IMAGEMESH_FALLBACK="1", IMAGEMESH_WEIGHTS_DIR=str(tmp_path))
    spec = pb.EnhanceSpec(upscale=2, output_format="jpg")
    async with Client(m.address, CLIENT_KEY) as c:
        tasks = [generate("a boat", "boat.png", num_outputs=2, width=40, height=30, then_enhance=spec),
                 generate("a tree", "tree.png", width=32, height=32)]
        events = [e async for e in c.submit(tasks)]
        results = {e.result.task_index: e.result for e in events if e.HasField("result")}
        boat = results[0]
        assert boat.state == pb.SUCCEEDED, boat.error.message
        assert [f.filename for f in boat.files] == ["boat_1.jpg", "boat_2.jpg"]
        batch_id = events[0].batch_id
        assert [size_of(await output_bytes(c, batch_id, f)) for f in boat.files] == [(80, 60), (80, 60)]
        assert boat.provider == "local" and "lanczos-fallback" in boat.model
        assert size_of(await output_bytes(c, batch_id, results[1].files[0])) == (32, 32)


@pytest.mark.enhance
async def test_enhance_task_runs_the_real_models_in_the_worker_process(mesh_factory, random_weights):
    m = mesh_factory(IMAGEMESH_CAPACITY="2")
    m.start_gateway()
    m.start_worker("enhance_worker", IMAGEMESH_WEIGHTS_DIR=str(random_weights), IMAGEMESH_TORCH_THREADS="2")
    png = io.BytesIO()
    Image.new("RGB", (48, 40), (200, 120, 40)).save(png, "PNG")
    async with Client(m.address, CLIENT_KEY) as c:
        tasks = [enhance(png.getvalue(), "photo.png", upscale=2, restore_faces=False),
                 enhance(b"not an image", "broken.png", upscale=2)]
        events = [e async for e in c.submit(tasks)]
        results = {e.result.task_index: e.result for e in events if e.HasField("result")}
        assert results[0].state == pb.SUCCEEDED, results[0].error.message
        assert size_of(await output_bytes(c, events[0].batch_id, results[0].files[0])) == (96, 80)
    assert "RealESRGAN" in results[0].model and results[0].device == "cpu"
    assert results[1].state == pb.FAILED and results[1].error.code == "INVALID_INPUT"
