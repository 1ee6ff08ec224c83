"""Fetching output URLs into bytes: the size cap and the SSRF guard, against a real HTTP server."""

from __future__ import annotations

import time

import httpx
import pytest

from gen_worker.providers import GenerateRequest, Output, ReplicateProvider, inline_outputs
from imagemesh import errors
from imagemesh.urlguard import check_url, fetch_bytes
from tests.fakes.provider_server import FakeProviders, png

TOKEN = "tok-inline"
LOOPBACK = ["127.0.0.0/8"]


@pytest.fixture
async def fake():
    async with FakeProviders(valid_tokens=[TOKEN], latency=0.01) as server:
        yield server


@pytest.fixture
async def client():
    async with httpx.AsyncClient() as c:
        yield c


async def test_inline_outputs_replaces_urls_with_bytes(fake, client):
    provider = ReplicateProvider(fake.url)
    outputs = await provider.generate(
        GenerateRequest("x", "acme/painter", num_outputs=2, inputs={"width": 40, "height": 30}),
        TOKEN, time.monotonic() + 10)
    await provider.aclose()
    inlined = await inline_outputs(outputs, client, max_bytes=1 << 20, allow_private=LOOPBACK)
    assert len(inlined) == 2
    for output in inlined:
        assert output.url is None and output.data == png(40, 30)
        assert output.content_type == "image/png" and (output.width, output.height) == (40, 30)
        assert output.url_expires_at_ms == 0


async def test_outputs_that_already_have_bytes_are_kept(client):
    output = Output(data=b"abc", content_type="image/png")
    assert await inline_outputs([output], client, allow_private=False) == [output]


async def test_size_cap_refuses_a_larger_image(fake, client):
    url = f"{fake.url}/files/256x256/big.png"
    size = len(png(256, 256))
    with pytest.raises(errors.InvalidInput) as info:
        await fetch_bytes(client, url, max_bytes=size - 1, allow_private=True)
    assert f"over the limit of {size - 1}" in info.value.message
    data, content_type = await fetch_bytes(client, url, max_bytes=size, allow_private=True)
    assert len(data) == size and content_type == "image/png"


async def test_inline_failure_names_the_output(fake, client):
    outputs = [Output(url=f"{fake.url}/files/8x8/a.png"), Output(url=f"{fake.url}/files/512x512/b.png")]
    with pytest.raises(errors.InvalidInput) as info:
        await inline_outputs(outputs, client, max_bytes=len(png(8, 8)) + 10, allow_private=True)
    assert info.value.message.startswith("output 2:")


async def test_expired_output_url_fails_clearly(fake, client):
    fake.control(url_ttl=-1)  # URLs are born expired
    provider = ReplicateProvider(fake.url)
    outputs = await provider.generate(GenerateRequest("x", "acme/painter"), TOKEN, time.monotonic() + 10)
    await provider.aclose()
    with pytest.raises(errors.InvalidInput) as info:
        await inline_outputs(outputs, client, allow_private=True)
    assert "HTTP 410" in info.value.message and "expired" in info.value.message


@pytest.mark.parametrize("url, reason", [
    ("file:///etc/passwd", "scheme 'file'"),
    ("ftp://example.com/x.png", "scheme 'ftp'"),
    ("gopher://example.com/", "scheme 'gopher'"),
    ("//no-scheme/x.png", "scheme '(none)'"),
    ("http://10.1.2.3/x.png", "non-public"),
    ("http://172.16.0.9/x.png", "non-public"),
    ("http://192.168.1.1/x.png", "non-public"),
    ("http://169.254.169.254/latest/meta-data/", "non-public"),
    ("http://[fe80::1]/x.png", "non-public"),
    ("http://[::ffff:10.0.0.1]/x.png", "non-public"),
    ("http://0.0.0.0/x.png", "non-public"),
    ("http://127.0.0.1/x.png", "non-public"),
    ("http://localhost/x.png", "non-public"),
    ("http:///x.png", "no host"),
])
async def test_guard_refuses_non_http_and_non_public_urls(client, url, reason):
    with pytest.raises(errors.InvalidInput) as info:
        await fetch_bytes(client, url, max_bytes=1000, allow_private=False)
    assert reason in info.value.message


async def test_loopback_is_refused_unless_allowed(fake, client):
    url = f"{fake.url}/files/8x8/a.png"
    with pytest.raises(errors.InvalidInput):
        await fetch_bytes(client, url, max_bytes=10_000, allow_private=False)
    with pytest.raises(errors.InvalidInput):
        await fetch_bytes(client, url, max_bytes=10_000, allow_private=["10.0.0.0/8"])
    data, _ = await fetch_bytes(client, url, max_bytes=10_000, allow_private=LOOPBACK)
    assert data == png(8, 8)


async def test_allow_list_does_not_open_other_private_ranges():
    with pytest.raises(errors.InvalidInput):
        await check_url("http://169.254.169.254/", allow_private=LOOPBACK)
    host, address = await check_url("http://93.184.216.34/x.png", allow_private=False)
    assert str(address) == "93.184.216.34"


async def test_redirects_are_checked_hop_by_hop(fake, client):
    good = f"{fake.url}/redirect?to={fake.url}/files/8x8/a.png"
    data, _ = await fetch_bytes(client, good, max_bytes=10_000, allow_private=LOOPBACK)
    assert data == png(8, 8)
    bad = f"{fake.url}/redirect?to=http://169.254.169.254/latest/meta-data/"
    with pytest.raises(errors.InvalidInput) as info:
        await fetch_bytes(client, bad, max_bytes=10_000, allow_private=LOOPBACK)
    assert "169.254.169.254" in info.value.message


async def test_redirect_loops_are_bounded(fake, client):
    loop = f"{fake.url}/redirect"  # redirects to itself
    with pytest.raises(errors.InvalidInput) as info:
        await fetch_bytes(client, loop, max_bytes=10_000, allow_private=LOOPBACK, max_redirects=2)
    assert "redirected more than 2 times" in info.value.message


async def test_messages_never_carry_the_query_string(fake, client):
    url = f"{fake.url}/files/8x8/a.png?X-Amz-Signature=supersecret"
    with pytest.raises(errors.InvalidInput) as info:
        await fetch_bytes(client, url, max_bytes=10, allow_private=LOOPBACK)
    assert "supersecret" not in info.value.message
