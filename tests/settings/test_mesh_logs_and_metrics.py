"""Through a real mesh: JSON log lines with the ids of each task, each process exporting only its
own metric families, and the request checks that used to let bad input through."""

from __future__ import annotations

import io
import json

import grpc
import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from imagemesh.client import Client
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.processes import CLIENT_KEY


def json_lines(proc) -> list[dict]:
    """Every line the process wrote to stderr, each parsed as JSON (a line that is not fails)."""
    lines = []
    for n, line in enumerate(proc.log_path.read_text().splitlines(), 1):
        try:
            lines.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"{proc.name} line {n} is not JSON: {line[:200]}") from None
    return lines


async def test_json_logs_carry_batch_task_attempt_tenant_and_worker_ids(mesh_factory):
    m = mesh_factory(IMAGEMESH_LOG_FORMAT="json", IMAGEMESH_LOG_LEVEL="DEBUG")
    gw = m.start_gateway()
    worker = m.start_worker()
    async with Client(m.address, CLIENT_KEY) as c:
        events = [e async for e in c.submit([pb.Task(generate=pb.GenerateSpec(prompt=f"p{i}")) for i in range(3)])]
    accepted = events[0].accepted
    assert events[-1].summary.succeeded == 3
    assert gw.stop() == 0 and worker.stop() == 0

    # Logs name a batch as the mesh does, by its ref (`<tenant tag>.<batch id>`, unique across
    # tenants); the task ids the client got start with it.
    ref = accepted.task_ids[0].rpartition("-")[0]
    assert ref.endswith("." + accepted.batch_id)
    gateway_lines = json_lines(gw)
    mine = [line for line in gateway_lines if line.get("batch_id") == ref]
    assert mine and all(line["tenant"] == "team-a" for line in mine)
    assert any("accepted" in line["msg"] for line in mine)

    worker_lines = json_lines(worker)
    for task_id in accepted.task_ids:
        attempts = [line for line in worker_lines if line.get("task_id") == task_id]
        assert attempts, f"no worker log line for {task_id}"
        for line in attempts:
            assert line["batch_id"] == ref and line["attempt"] == 1
            assert line["worker_id"] == "gen_worker-0"
    for line in gateway_lines + worker_lines:
        assert {"ts", "level", "logger", "msg"} <= set(line)


async def scrape(proc) -> set[str]:
    async with httpx.AsyncClient() as http:
        reply = await http.get(f"http://127.0.0.1:{proc.values['METRICS_PORT']}/metrics")
    return {f.name for f in text_string_to_metric_families(reply.text) if f.name.startswith("imagemesh_")}


async def test_each_process_exports_only_its_own_metric_families(mesh_factory, tmp_path):
    m = mesh_factory()
    gw = m.start_gateway()
    gen = m.start_worker()
    enhance = m.start_worker("enhance_worker", IMAGEMESH_FALLBACK="1", IMAGEMESH_WEIGHTS_DIR=str(tmp_path))
    gateway_families, gen_families, enhance_families = [await scrape(p) for p in (gw, gen, enhance)]
    # A generation worker has no Redis: it must not say Redis is down.
    assert "imagemesh_redis_up" in gateway_families
    assert "imagemesh_redis_up" not in gen_families | enhance_families
    assert not gen_families & {"imagemesh_queue_depth", "imagemesh_schedulable_backlog", "imagemesh_lease_in_use"}
    assert "imagemesh_worker_connected" in gen_families and "imagemesh_worker_connected" in enhance_families
    assert not gateway_families & {"imagemesh_worker_connected", "imagemesh_enhance_inference_seconds"}
    assert not gen_families & {"imagemesh_enhance_inference_seconds"}
    assert "imagemesh_enhance_inference_seconds" in enhance_families
    assert "imagemesh_provider_request_seconds" in gen_families


async def test_batch_id_with_a_trailing_newline_is_refused(mesh_factory):
    m = mesh_factory()
    m.start_gateway()
    async with Client(m.address, CLIENT_KEY) as c:
        request = pb.SubmitBatchRequest(batch_id="b-trailing\n", tasks=[pb.Task(generate=pb.GenerateSpec(prompt="x"))])
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in c.api.SubmitBatch(request, metadata=c._metadata):
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch_id" in info.value.details()


def image_bytes(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(out, format=fmt)
    return out.getvalue()


async def test_enhance_reads_only_png_jpeg_and_webp(mesh_factory, tmp_path):
    m = mesh_factory(IMAGEMESH_MAX_ATTEMPTS="1")
    m.start_gateway()
    m.start_worker("enhance_worker", IMAGEMESH_FALLBACK="1", IMAGEMESH_WEIGHTS_DIR=str(tmp_path))
    formats = ["PNG", "JPEG", "WEBP", "SGI", "TGA", "PPM"]
    tasks = [pb.Task(output_filename=f"{f.lower()}.png",
                     enhance=pb.EnhanceSpec(image=image_bytes(f), upscale=2, output_format="png"))
             for f in formats]
    async with Client(m.address, CLIENT_KEY) as c:
        results = {e.result.task_index: e.result async for e in c.submit(tasks) if e.HasField("result")}
    for i, fmt in enumerate(formats):
        result = results[i]
        if fmt in ("PNG", "JPEG", "WEBP"):
            assert result.state == pb.SUCCEEDED, (fmt, result.error)
        else:
            assert result.state == pb.FAILED and result.error.code == "INVALID_INPUT", fmt
            assert "png, jpeg" in result.error.message
    assert "SGI image" in results[3].error.message and "PPM" in results[5].error.message


async def test_an_enhance_image_url_fetch_has_a_total_deadline(mesh_factory, tmp_path, trickle_server):
    """The trickling server would hold the fetch for 16 s; IMAGEMESH_FETCH_TIMEOUT=2 ends it."""
    import time

    m = mesh_factory(IMAGEMESH_MAX_ATTEMPTS="1")
    m.start_gateway()
    m.start_worker("enhance_worker", IMAGEMESH_FALLBACK="1", IMAGEMESH_WEIGHTS_DIR=str(tmp_path),
                   IMAGEMESH_ALLOW_PRIVATE_URLS="1", IMAGEMESH_FETCH_TIMEOUT="2")
    task = pb.Task(enhance=pb.EnhanceSpec(image_url=f"{trickle_server}/slow.png", upscale=2))
    started = time.monotonic()
    async with Client(m.address, CLIENT_KEY) as c:
        results = [e.result async for e in c.submit([task]) if e.HasField("result")]
    assert time.monotonic() - started < 6
    assert results[0].state == pb.FAILED and results[0].error.code == "UNAVAILABLE", results[0].error
    assert "longer than 2s" in results[0].error.message
