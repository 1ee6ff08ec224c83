"""The worker's side of storage (imagemesh.uploads) against the real S3 server: bodies streamed
with a length, spooled when the length is unknown, capped while streaming (frames on the worker stream: tests/transport/test_auth_before_body.py)."""

from __future__ import annotations

import os

import httpx
import pytest

from imagemesh.errors import OutputTooLarge
from imagemesh.storage import ObjectNotFound
from imagemesh.uploads import Body, ObjectLink
from imagemesh.v1 import worker_pb2 as wpb


def unknown_length(data: bytes, size: int = 300_000) -> Body:
    async def chunks():
        for start in range(0, len(data), size):
            yield data[start:start + size]
    return Body(chunks(), None)


def assignment(s3_store, names: list[str], *, max_bytes: int, inline_max: int = 0) -> wpb.Assignment:
    keys = [f"team-a/b1/0/1/{n}" for n in names]
    urls = s3_store.sign_put(keys, 60)
    return wpb.Assignment(attempt_id="b1-0#1", uploads=[wpb.UploadTarget(object=k, put_url=u, max_bytes=max_bytes)
                                                        for k, u in zip(keys, urls)], inline_max_bytes=inline_max)


async def stored(s3_store, key: str) -> bytes:
    obj = await s3_store.open(key)
    return b"".join([c async for c in obj.chunks])


@pytest.mark.parametrize("known_length", [True, False])
async def test_an_output_is_written_through_its_presigned_url(s3_store, known_length):
    data = os.urandom(2_500_000)
    a = assignment(s3_store, ["fox.png"], max_bytes=10_000_000)
    async with httpx.AsyncClient() as http:
        link = ObjectLink(http=http, api_key="")
        body = Body.of(data) if known_length else unknown_length(data)
        f = await link.output(a, 0, body, "image/png", "fox.png")
    assert f.object == "team-a/b1/0/1/fox.png" and f.size_bytes == len(data)
    assert f.WhichOneof("location") is None
    assert await stored(s3_store, f.object) == data


@pytest.mark.parametrize("known_length", [True, False])
async def test_an_output_over_its_limit_fails_and_stores_nothing(s3_store, known_length):
    data = os.urandom(1_000_000)
    a = assignment(s3_store, ["big.png"], max_bytes=600_000)
    async with httpx.AsyncClient() as http:
        link = ObjectLink(http=http, api_key="")
        with pytest.raises(OutputTooLarge, match="600000"):
            await link.output(a, 0, Body.of(data) if known_length else unknown_length(data), "image/png", "big.png")
    with pytest.raises(ObjectNotFound):
        await s3_store.open("team-a/b1/0/1/big.png")


async def test_small_outputs_go_inline_only_when_asked_and_large_ones_are_stored_anyway(s3_store):
    a = assignment(s3_store, ["s.png", "l.png"], max_bytes=10_000_000, inline_max=1000)
    async with httpx.AsyncClient() as http:
        link = ObjectLink(http=http, api_key="")
        small = await link.output(a, 0, unknown_length(b"s" * 900), "image/png", "s.png")
        large = await link.output(a, 1, unknown_length(b"l" * 5000, size=700), "image/png", "l.png")
    assert small.data == b"s" * 900 and not small.object
    assert large.object and await stored(s3_store, large.object) == b"l" * 5000


async def test_without_targets_outputs_are_inline_and_capped():
    a = wpb.Assignment(attempt_id="b1-0#1", inline_max_bytes=1000)
    async with httpx.AsyncClient() as http:
        link = ObjectLink(http=http, api_key="")
        f = await link.output(a, 0, Body.of(b"x" * 1000), "image/png", "x.png")
        assert f.data == b"x" * 1000
        with pytest.raises(OutputTooLarge):
            await link.output(a, 0, Body.of(b"x" * 1001), "image/png", "x.png")
