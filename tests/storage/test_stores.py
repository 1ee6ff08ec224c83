"""Both backends behind one interface, on real storage: a directory, and SeaweedFS over S3."""

from __future__ import annotations

import os

import httpx
import pytest

from imagemesh.storage import ObjectNotFound, ObjectTooLarge
from imagemesh.storage.keys import BadKey, attempt_prefix, check, group_of, object_key, tenant_segment


async def chunks_of(data: bytes, size: int = 100_000):
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def read_all(store, key: str) -> bytes:
    obj = await store.open(key)
    return b"".join([c async for c in obj.chunks])


async def test_put_streams_in_and_open_streams_out(store):
    data = os.urandom(3 * 1024 * 1024 + 17)
    key = object_key(attempt_prefix("team-a", "b1", 0, 1), "fox.png")
    size = await store.put(key, chunks_of(data), content_type="image/png", max_bytes=10 << 20)
    assert size == len(data)
    obj = await store.open(key, chunk_bytes=64 * 1024)
    assert obj.size == len(data) and obj.content_type == "image/png"
    got = [c async for c in obj.chunks]
    assert b"".join(got) == data and len(got) > 1


async def test_a_put_over_the_limit_fails_and_leaves_nothing(store):
    key = object_key(attempt_prefix("team-a", "b2", 0, 1), "big.png")
    with pytest.raises(ObjectTooLarge):
        await store.put(key, chunks_of(os.urandom(2_000_000)), max_bytes=1_000_000)
    with pytest.raises(ObjectNotFound):
        await store.open(key)
    assert await store.keys("team-a/b2") == []


async def test_attempts_of_one_task_never_share_an_object(store):
    first = object_key(attempt_prefix("team-a", "b3", 4, 1), "out.png")
    second = object_key(attempt_prefix("team-a", "b3", 4, 2), "out.png")
    assert first != second
    await store.put(first, chunks_of(b"one"), max_bytes=100)
    await store.put(second, chunks_of(b"two"), max_bytes=100)
    assert await read_all(store, first) == b"one" and await read_all(store, second) == b"two"


async def test_delete_prefix_removes_one_batch_only(store):
    for batch in ("b4", "b5"):
        await store.put(object_key(attempt_prefix("team-a", batch, 0, 1), "x.png"), chunks_of(b"x"), max_bytes=10)
    await store.delete_prefix("team-a/b4")
    assert await store.keys("team-a/b4") == []
    assert await store.keys("team-a/b5") == ["team-a/b5/0/1/x.png"]
    await store.delete_prefix("team-a/b4")  # idempotent


async def test_missing_object_is_not_found(store):
    with pytest.raises(ObjectNotFound):
        await store.open("team-a/nope/0/1/x.png")


async def test_s3_presigned_urls_work_with_a_plain_http_client(s3_store):
    key = object_key(attempt_prefix("team-a", "b6", 0, 1), "up.png")
    put_url, = s3_store.sign_put([key], 60)
    async with httpx.AsyncClient() as http:
        response = await http.put(put_url, content=b"\x89PNG body", headers={"Content-Type": "image/png"})
        assert response.status_code == 200
        get_url, = s3_store.sign_get([key], 60)
        assert "X-Amz-Signature" in get_url and "X-Amz-Expires=60" in get_url
        response = await http.get(get_url)
        assert response.status_code == 200 and response.content == b"\x89PNG body"
        tampered = get_url.replace("up.png", "other.png")
        assert (await http.get(tampered)).status_code == 403


def test_directory_store_has_no_urls(directory_store):
    assert directory_store.sign_get(["a/b/0/1/x.png"], 60) is None


@pytest.mark.parametrize("bad", ["", "a//b", "a/../b", "a/./b", "a\\b", "a/b\x00", "/a/b"])
def test_keys_that_could_escape_a_prefix_are_refused(bad):
    with pytest.raises(BadKey):
        check(bad)


def test_key_layout():
    assert object_key(attempt_prefix("team-a", "b1", 3, 2), "../../etc/passwd") == "team-a/b1/3/2/passwd"
    assert tenant_segment("team-a") == "team-a"
    odd = tenant_segment("../x y")
    assert odd.startswith("~") and "/" not in odd
    assert group_of("team-a/b1/3/2/x.png") == "team-a/b1"
    assert group_of("team-a/~inputs/u1/face.png") == "team-a/~inputs/u1"
