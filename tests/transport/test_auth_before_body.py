"""Calls are authenticated from their metadata before the request is read: an unauthenticated
15 MB SubmitBatch is refused UNAUTHENTICATED and costs the gateway no memory of its size (its
peak RSS, VmHWM from /proc, measured on the real gateway process)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from imagemesh.client import Client, generate
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import imagemesh_pb2_grpc as pb_grpc
from tests.processes import CLIENT_KEY, WORKER_KEY

from .conftest import proc_status

MB = 1024 * 1024
BODY = 15 * MB
CALLS = 6


def big_request(tag: int) -> pb.SubmitBatchRequest:
    image = bytes([tag]) * BODY
    return pb.SubmitBatchRequest(batch_id=f"big-{tag}", tasks=[pb.Task(
        output_filename="big.png", enhance=pb.EnhanceSpec(image=image, upscale=2, output_format="png"))])


async def submit(address: str, request: pb.SubmitBatchRequest, key: str | None) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 32 * MB)]) as ch:
        call = pb_grpc.ImageMeshStub(ch).SubmitBatch(request, metadata=metadata, timeout=30)
        try:
            async for event in call:
                if event.HasField("accepted"):
                    call.cancel()
                    return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.timeout(120)
async def test_unauthenticated_15mb_submits_are_refused_before_the_body_is_read(mesh_factory):
    m = mesh_factory()
    gateway = m.start_gateway()
    pid = gateway.proc.pid
    requests = [big_request(i) for i in range(CALLS)]
    # Warm up the gateway's allocator and gRPC with a small unauthenticated call.
    assert await submit(m.address, pb.SubmitBatchRequest(), None) == grpc.StatusCode.UNAUTHENTICATED
    before = proc_status(pid, "VmHWM")

    codes = await asyncio.gather(*(submit(m.address, r, key) for r, key in
                                   zip(requests, [None, "wrong-key", None, "wrong-key", None, WORKER_KEY])))
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 5 + [grpc.StatusCode.PERMISSION_DENIED]
    grown = proc_status(pid, "VmHWM") - before
    print(f"peak RSS grew {grown / MB:.1f} MB for {CALLS} refused calls of {BODY / MB:.0f} MB")
    assert grown < BODY, f"peak RSS grew by {grown / MB:.0f} MB: refused bodies were read"

    # The measure can see a body: one accepted call of the same size grows the peak by more.
    assert await submit(m.address, big_request(99), CLIENT_KEY) == grpc.StatusCode.OK
    accepted = proc_status(pid, "VmHWM") - before
    print(f"after one accepted call: {accepted / MB:.1f} MB")
    assert accepted > BODY


async def test_default_message_limit_is_16_mib(mesh_factory):
    m = mesh_factory()
    m.start_gateway()
    async with Client(m.address, CLIENT_KEY, max_message_bytes=64 * MB) as client:
        request = pb.SubmitBatchRequest(batch_id="too-big", tasks=[pb.Task(
            output_filename="x.png", enhance=pb.EnhanceSpec(image=b"\0" * (17 * MB), upscale=2))])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.api.SubmitBatch(request, metadata=client._metadata).read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.timeout(120)
async def test_results_larger_than_a_message_fail_alone_and_the_rest_arrive(mesh_factory):
    """With a small message limit on both sides, a worker splits its results over several
    frames, and the one result that can't fit any frame fails alone (OUTPUT_TOO_LARGE), instead of
    a refused frame breaking the stream and every attempt on it."""
    limit = 100_000
    # Storage off: outputs ride in the results (with storage, they never reach a frame).
    m = mesh_factory(IMAGEMESH_MAX_MESSAGE_BYTES=str(limit), IMAGEMESH_CAPACITY="8", IMAGEMESH_STORAGE_URL="none",
                     IMAGEMESH_INLINE_MAX_BYTES=str(4 * limit))
    m.start_gateway()
    worker = m.start_worker()
    tasks = [generate(f"fox {i}", f"fox{i}.jpg", providers=["local"], width=1024, height=1024, format="jpg")
             for i in range(6)]  # ~50 kB each: one or two per frame
    tasks.append(generate("big fox", "big.jpg", providers=["local"], width=2048, height=2048, format="jpg"))  # ~135 kB
    results = {}
    async with Client(m.address, CLIENT_KEY, reattach_attempts=0) as client:
        async for event in client.submit(tasks):
            if event.HasField("result"):
                results[event.result.output_filename] = event.result
    big = results.pop("big.jpg")
    assert big.state == pb.FAILED and big.error.code == "OUTPUT_TOO_LARGE" and "IMAGEMESH_MAX_MESSAGE_BYTES" in big.error.message
    assert {r.state for r in results.values()} == {pb.SUCCEEDED} and len(results) == 6
    assert all(r.attempts == 1 for r in results.values())  # nothing re-ran after a broken stream
    assert worker.log().count("connected to gateway") == 1
