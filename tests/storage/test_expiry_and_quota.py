"""Stored objects expire with their batch, and a tenant's stored bytes are bounded: real
processes on both backends, with a retention of seconds."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from imagemesh.client import Client, generate
from tests.processes import CLIENT_KEY, OTHER_CLIENT_KEY


async def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s")


async def test_outputs_and_uploads_are_deleted_when_their_retention_ends(mesh_factory, backend):
    name, settings, store = backend
    m = mesh_factory(IMAGEMESH_CAPACITY="4", IMAGEMESH_RETENTION="3", IMAGEMESH_SWEEP_INTERVAL="0.5", **settings)
    m.start_gateway()
    m.start_worker()
    async with Client(m.address, CLIENT_KEY) as c:
        events = [e async for e in c.submit([generate(f"gone {i}", "g.png", width=16, height=16) for i in range(3)])]
        upload = await c.upload_input(b"\x89PNG not really", "face.png")
    batch_id = events[0].batch_id
    assert len(await store.keys(f"team-a/{batch_id}")) == 3
    assert await store.keys(upload.object.rsplit("/", 1)[0]) == [upload.object]

    async def swept() -> bool:
        return not await store.keys(f"team-a/{batch_id}") and not await store.keys("team-a/~inputs")
    await wait_for(swept, 15, "the sweeper did not delete the expired objects")


async def test_a_tenant_over_its_stored_bytes_quota_is_refused_until_its_outputs_expire(mesh_factory, tmp_path):
    m = mesh_factory(IMAGEMESH_CAPACITY="4", IMAGEMESH_RETENTION="4", IMAGEMESH_SWEEP_INTERVAL="0.5",
                     IMAGEMESH_MAX_STORED_BYTES_PER_TENANT="2000", IMAGEMESH_STORAGE_URL=str(tmp_path / "store"))
    m.start_gateway()
    m.start_worker()
    async with Client(m.address, CLIENT_KEY) as a, Client(m.address, OTHER_CLIENT_KEY) as b:
        events = [e async for e in a.submit([generate(f"q {i}", "q.png", width=64, height=64, seed=i) for i in range(4)])]
        stored = sum(f.size_bytes for e in events if e.HasField("result") for f in e.result.files)
        assert stored > 2000
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            [e async for e in a.submit([generate("more", "m.png")])]
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"hold {stored} bytes, the quota is 2000" in refused.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await a.upload_input(b"x" * 10, "x.png")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        other = [e async for e in b.submit([generate("theirs", "t.png", width=16, height=16)])]
        assert other[-1].summary.succeeded == 1, "another tenant is not affected"

        async def accepted_again() -> bool:
            try:
                again = [e async for e in a.submit([generate("later", "l.png", width=16, height=16)])]
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False
            return again[-1].summary.succeeded == 1
        await wait_for(accepted_again, 20, "the quota was not given back when the outputs expired")
