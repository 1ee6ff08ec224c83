"""Outputs stored and fetched through real gateway and worker processes, on both backends."""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import pytest

from gen_worker.providers.local import render
from gateway.grants import Grants
from imagemesh.client import Client, RequestTooLarge, enhance, generate
from imagemesh.storage.keys import attempt_prefix, object_key
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import worker_pb2 as wpb
from imagemesh.v1 import worker_pb2_grpc as wpb_grpc
from tests.processes import CLIENT_KEY, OTHER_CLIENT_KEY, SECRET_KEY, WORKER_KEY


def started(mesh_factory, settings: dict[str, str], **extra):
    m = mesh_factory(IMAGEMESH_CAPACITY="4", **settings, **extra)
    m.start_gateway()
    m.start_worker()
    return m


async def download(client: Client, batch_id: str, obj: str) -> tuple[bytes, pb.FileChunk]:
    chunks = [c async for c in client.download(batch_id, obj)]
    return b"".join(c.data for c in chunks), chunks[0]


async def test_outputs_are_stored_and_downloadable_by_their_tenant_only(mesh_factory, backend):
    name, settings, store = backend
    m = started(mesh_factory, settings)
    tasks = [generate(f"a fox {i}", "fox.png", num_outputs=2 if i == 0 else 1, seed=i, width=48, height=32)
             for i in range(3)]
    async with Client(m.address, CLIENT_KEY) as c, Client(m.address, OTHER_CLIENT_KEY) as other:
        events = [e async for e in c.submit(tasks)]
        batch_id = events[0].batch_id
        results = sorted((e.result for e in events if e.HasField("result")), key=lambda r: r.task_index)
        assert [r.state for r in results] == [pb.SUCCEEDED] * 3
        assert [f.filename for f in results[0].files] == ["fox_1.png", "fox_2.png"]
        for r in results:
            for i, f in enumerate(r.files):
                assert f.WhichOneof("location") != "data", "no bytes in results"
                assert f.object.startswith(f"team-a/{batch_id}/{r.task_index}/1/")
                expected = render(f"a fox {r.task_index}", r.task_index + i, 48, 32)
                data, first = await download(c, batch_id, f.object)
                assert data == expected and f.size_bytes == len(expected)
                assert (first.size_bytes, first.content_type) == (len(expected), "image/png")
                assert (f.width, f.height) == (48, 32)
                if name == "s3":
                    async with httpx.AsyncClient() as http:
                        assert (await http.get(f.url)).content == expected, "the presigned URL serves the output"
                else:
                    assert not f.url
        assert await store.keys(f"team-a/{batch_id}") == sorted(f.object for r in results for f in r.files)
        obj = results[1].files[0].object
        for call in (other.download(batch_id, obj), other.download("b-none", obj),
                     c.download(batch_id, obj.replace("team-a", "team-b")), c.download(batch_id, obj + "x")):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await download_all(call)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def download_all(call):
    return [c async for c in call]


async def test_s3_urls_are_signed_afresh_each_time_the_batch_is_read(mesh_factory, seaweed):
    from tests.storage.conftest import s3_settings

    m = started(mesh_factory, s3_settings(seaweed, "replay"), IMAGEMESH_STORAGE_URL_TTL="2")
    async with Client(m.address, CLIENT_KEY) as c, httpx.AsyncClient() as http:
        events = [e async for e in c.submit([generate("a heron", "heron.png", width=32, height=32)])]
        first = next(e.result for e in events if e.HasField("result")).files[0]
        assert (await http.get(first.url)).status_code == 200
        assert abs(first.url_expires_at_ms - (time.time() + 2) * 1000) < 1500
        await asyncio.sleep(3.0)
        assert (await http.get(first.url)).status_code == 403, "the first URL has expired"
        replay = [e async for e in c.watch(events[0].batch_id)]
        again = next(e.result for e in replay if e.HasField("result")).files[0]
        assert again.object == first.object and again.url != first.url
        assert again.url_expires_at_ms > first.url_expires_at_ms + 2000
        response = await http.get(again.url)
        assert response.status_code == 200 and response.content == render("a heron", 0, 32, 32)


async def test_without_storage_outputs_are_inline_and_an_oversized_one_fails_alone(mesh_factory):
    m = started(mesh_factory, {"IMAGEMESH_STORAGE_URL": "none", "IMAGEMESH_INLINE_MAX_BYTES": "4000"})
    async with Client(m.address, CLIENT_KEY) as c:
        tasks = [generate("small", "s.png", width=32, height=32),
                 generate("large", "l.png", width=512, height=512, format="png", seed=7)]
        events = [e async for e in c.submit(tasks)]
    results = {e.result.task_index: e.result for e in events if e.HasField("result")}
    assert results[0].state == pb.SUCCEEDED and results[0].files[0].data == render("small", 0, 32, 32)
    assert len(render("large", 7, 512, 512)) > 4000
    assert results[1].state == pb.FAILED and results[1].error.code == "OUTPUT_TOO_LARGE"
    assert "4000" in results[1].error.message and results[1].attempts == 1


async def test_a_grant_never_lets_a_worker_write_another_attempts_objects(mesh_factory, tmp_path):
    root = tmp_path / "store"
    m = started(mesh_factory, {"IMAGEMESH_STORAGE_URL": str(root)})
    grants = Grants(SECRET_KEY)
    mine = attempt_prefix("team-a", "b1", 0, 1)
    token = grants.issue(write_prefix=mine, reads=[], max_bytes=1000, ttl=60)
    metadata = (("authorization", f"Bearer {WORKER_KEY}"),)

    async def put(obj: str, data: bytes, key: str = token) -> wpb.PutObjectReply:
        def parts():
            yield wpb.PutObjectRequest(header=wpb.PutObjectHeader(object=obj, token=key))
            yield wpb.PutObjectRequest(data=data)
        async with grpc.aio.insecure_channel(m.address) as channel:
            return await wpb_grpc.WorkerObjectsStub(channel).PutObject(parts(), metadata=metadata)

    assert (await put(object_key(mine, "ok.png"), b"fine")).size_bytes == 4
    assert (root / mine / "ok.png").read_bytes() == b"fine"
    for obj, key, code in ((object_key(attempt_prefix("team-a", "b1", 0, 2), "ok.png"), token, "PERMISSION_DENIED"),
                           (object_key(attempt_prefix("team-b", "b1", 0, 1), "ok.png"), token, "PERMISSION_DENIED"),
                           (object_key(mine, "ok.png"), Grants("another key").issue(
                               write_prefix=mine, reads=[], max_bytes=1000, ttl=60), "PERMISSION_DENIED"),
                           (object_key(mine, "big.png"), token, "RESOURCE_EXHAUSTED")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await put(obj, b"x" * 2000 if "big" in obj else b"evil", key)
        assert refused.value.code().name == code
    assert (root / mine / "ok.png").read_bytes() == b"fine"
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["ok.png"], "nothing else was written"


async def test_small_objects_share_one_stream_and_a_refused_one_fails_alone(mesh_factory, tmp_path):
    root = tmp_path / "store"
    m = started(mesh_factory, {"IMAGEMESH_STORAGE_URL": str(root)})
    grants = Grants(SECRET_KEY)
    mine = attempt_prefix("team-a", "b2", 0, 1)
    token = grants.issue(write_prefix=mine, reads=[], max_bytes=1000, ttl=60)
    objects = [wpb.SmallObject(id=1, object=object_key(mine, "a.png"), token=token, data=b"first"),
               wpb.SmallObject(id=2, object=object_key(attempt_prefix("team-a", "b2", 0, 2), "a.png"),
                               token=token, data=b"another attempt's"),
               wpb.SmallObject(id=3, object=object_key(mine, "big.png"), token=token, data=b"x" * 1001),
               wpb.SmallObject(id=4, object=object_key(mine, "b.png"), token=token, data=b"second")]

    async def requests():
        yield wpb.PutSmallObjectsRequest(objects=objects[:2])
        yield wpb.PutSmallObjectsRequest(objects=objects[2:])

    async with grpc.aio.insecure_channel(m.address) as channel:
        call = wpb_grpc.WorkerObjectsStub(channel).PutSmallObjects(
            requests(), metadata=(("authorization", f"Bearer {WORKER_KEY}"),))
        receipts = {}
        async for reply in call:
            receipts.update({r.id: r for r in reply.receipts})
            if len(receipts) == 4:
                break
        call.cancel()
    assert (receipts[1].error_code, receipts[1].size_bytes) == ("", 5)
    assert receipts[2].error_code == "PERMISSION_DENIED"
    assert receipts[3].error_code == "RESOURCE_EXHAUSTED"
    assert (receipts[4].error_code, receipts[4].size_bytes) == ("", 6)
    assert (root / mine / "a.png").read_bytes() == b"first" and (root / mine / "b.png").read_bytes() == b"second"
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["a.png", "b.png"]


def _noise_png(side: int, seed: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


async def test_a_batch_over_the_message_limit_is_refused_by_the_client_unless_its_images_can_be_uploaded(
        mesh_factory, tmp_path):
    m = mesh_factory()
    inline_only = m.start_gateway(IMAGEMESH_STORAGE_URL="none")
    storing = m.start_gateway(IMAGEMESH_STORAGE_URL=str(tmp_path / "store"))
    images = [_noise_png(200, seed) for seed in range(4)]
    assert all(len(i) > 100_000 for i in images)
    limits = dict(max_message_bytes=300_000, upload_threshold=50_000)

    async def accepted(address: str, n: int) -> bool:
        async with Client(address, CLIENT_KEY, **limits) as c:
            async for e in c.submit([enhance(i, f"e{k}.png") for k, i in enumerate(images[:n])]):
                await c.cancel(e.batch_id)
                return e.HasField("accepted")
        return False

    with pytest.raises(RequestTooLarge) as refused:
        await accepted(inline_only.values["GATEWAY"], 4)
    assert "300000" in str(refused.value) and "batch of 4 tasks" in str(refused.value)
    assert await accepted(inline_only.values["GATEWAY"], 2), "a batch within the limit still goes inline"
    assert await accepted(storing.values["GATEWAY"], 4), "with storage the images are uploaded, not sent inline"
