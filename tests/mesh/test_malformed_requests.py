"""Property-based: whatever bytes or odd-but-valid messages a caller sends, the gateway answers
with a proper status, in bounded time, and keeps serving."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagemesh.client import generate
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.processes import CLIENT_KEY

PROPER = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
          grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.PERMISSION_DENIED}
METADATA = (("authorization", f"Bearer {CLIENT_KEY}"),)
STREAMING = ["SubmitBatch", "WatchBatch"]
UNARY = ["GetBatch", "CancelBatch"]
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
async def channel(mesh):
    async with grpc.aio.insecure_channel(mesh.address) as ch:
        yield ch


async def call_raw(channel, method: str, payload: bytes) -> grpc.StatusCode:
    path = f"/imagemesh.v1.ImageMesh/{method}"
    try:
        if method in STREAMING:
            call = channel.unary_stream(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)(
                payload, metadata=METADATA, timeout=10)
            async for _ in call:
                pass
        else:
            await channel.unary_unary(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)(
                payload, metadata=METADATA, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@SLOW
@given(method=st.sampled_from(STREAMING + UNARY), payload=st.binary(max_size=512))
async def test_random_bytes_get_a_proper_status(channel, method, payload):
    code = await call_raw(channel, method, payload)
    assert code in PROPER, f"{method} answered {code} to {payload!r}"


labels = st.dictionaries(st.text(max_size=300), st.text(max_size=300), max_size=20)
tasks = st.builds(
    lambda prompt, name, n, lab: pb.Task(output_filename=name, labels=lab,
                                         generate=pb.GenerateSpec(prompt=prompt, num_outputs=n,
                                                                  input={"width": 16, "height": 16})),
    st.text(max_size=5000), st.text(max_size=400), st.integers(-5, 20), labels)


@SLOW
@given(batch=st.lists(tasks, max_size=5), batch_id=st.text(max_size=80))
async def test_odd_but_well_formed_batches_get_results_or_a_clear_error(channel, batch, batch_id):
    request = pb.SubmitBatchRequest(tasks=batch, batch_id=batch_id)
    code = await call_raw(channel, "SubmitBatch", request.SerializeToString())
    assert code in PROPER


async def test_invalid_utf8_in_a_string_field_is_invalid_argument(channel, client):
    # Field 1 of SubmitBatchRequest is `tasks`; inside, field 1 of Task is `output_filename`.
    bad_task = b"\x0a\x02\xff\xfe"
    payload = b"\x0a" + bytes([len(bad_task)]) + bad_task
    assert await call_raw(channel, "SubmitBatch", payload) == grpc.StatusCode.INVALID_ARGUMENT
    # ...and the gateway goes on serving.
    events = [e async for e in client.submit([generate("still here", width=16, height=16)])]
    assert events[-1].summary.succeeded == 1
