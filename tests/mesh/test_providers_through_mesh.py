"""Hosted providers through the whole mesh, against the fake provider server (real HTTP)."""

from __future__ import annotations

import io

import pytest
import redis as sync_redis
from PIL import Image

from imagemesh.cli import load_tasks
from imagemesh.client import Client
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.conftest import ROOT
from tests.fakes.provider_server import FakeProviders
from tests.processes import ADMIN_KEY, CLIENT_KEY

TOKEN = "r8_caller_token_abcdefghijklmnopqrstuvwxyz0123"


def provider_mesh(mesh_factory, fake_url: str, provider: str, **extra):
    m = mesh_factory(IMAGEMESH_DEFAULT_PROVIDERS=provider,
                     IMAGEMESH_REPLICATE_BASE_URL=fake_url, IMAGEMESH_FAL_BASE_URL=fake_url,
                     IMAGEMESH_OPENAI_BASE_URL=fake_url, IMAGEMESH_ALLOW_PRIVATE_URLS="1",
                     IMAGEMESH_CAPACITY="8", **extra)
    m.start_gateway()
    m.start_worker()
    return m


@pytest.mark.parametrize("provider", ["replicate", "fal", "openai"])
async def test_the_same_tasks_file_runs_against_each_provider_by_settings_only(mesh_factory, provider, tmp_path):
    tasks, _, _ = load_tasks(ROOT / "examples" / "tasks.json")
    tasks = [t for t in tasks if not t.generate.providers]  # the example's deliberate bad task aside
    for t in tasks:
        t.generate.inline_outputs = True
        t.ClearField("then_enhance")  # no enhance worker here: generation only
    async with FakeProviders(latency=0.05) as fake:
        m = provider_mesh(mesh_factory, fake.url, provider)
        async with Client(m.address, CLIENT_KEY) as c:
            events = [e async for e in c.submit(tasks, credentials={provider: TOKEN})]
        stats = fake.stats(TOKEN)
    results = [e.result for e in events if e.HasField("result")]
    assert len(results) == len(tasks)
    assert {r.state for r in results} == {pb.SUCCEEDED}, [r.error.message for r in results]
    assert {r.provider for r in results} == {provider}
    for r in results:
        for f in r.files:
            Image.open(io.BytesIO(f.data)).verify()
    assert stats["jobs"] >= len(tasks)


async def test_key_limit_holds_at_the_provider_and_tokens_stay_secret(mesh_factory, redis_server):
    async with FakeProviders(latency=0.2) as fake:
        m = provider_mesh(mesh_factory, fake.url, "replicate", IMAGEMESH_KEY_LIMITS="replicate=3")
        m.start_worker()
        async with Client(m.address, CLIENT_KEY) as c:
            tasks = [pb.Task(output_filename=f"k{i}.png", generate=pb.GenerateSpec(prompt=f"p{i}")) for i in range(30)]
            events = [e async for e in c.submit(tasks, credentials={"replicate": TOKEN})]
        stats = fake.stats(TOKEN)
    assert events[-1].summary.succeeded == 30
    assert stats["max_in_flight"] == 3, stats
    # The caller's token is nowhere in Redis keys or values in clear, nor in any process log.
    r = sync_redis.Redis.from_url(redis_server.url)
    for key in r.scan_iter("*"):
        assert TOKEN.encode() not in key
        if r.type(key) == b"hash":
            assert all(TOKEN.encode() not in v for v in r.hgetall(key).values())
        if r.type(key) == b"stream":
            assert all(TOKEN.encode() not in v for _, f in r.xrange(key) for v in f.values())
    for p in m.procs:
        assert TOKEN not in p.log()


async def test_fallback_to_the_next_provider_when_one_keeps_failing(mesh_factory):
    async with FakeProviders(latency=0.02) as fake:
        m = provider_mesh(mesh_factory, fake.url, "replicate", IMAGEMESH_MAX_TRIES="2")
        fake.control(token="bad-replicate", errors=[503] * 50)
        async with Client(m.address, CLIENT_KEY) as c:
            task = pb.Task(output_filename="fb.png", generate=pb.GenerateSpec(prompt="x", providers=["replicate", "fal"]))
            events = [e async for e in c.submit([task], credentials={"replicate": "bad-replicate", "fal": TOKEN})]
    result = next(e.result for e in events if e.HasField("result"))
    assert result.state == pb.SUCCEEDED and result.provider == "fal"
    assert result.attempts == 2


async def test_bad_token_fails_fast_with_auth_and_no_retries(mesh_factory):
    async with FakeProviders(latency=0.02, valid_tokens=[TOKEN]) as fake:
        m = provider_mesh(mesh_factory, fake.url, "openai")
        async with Client(m.address, CLIENT_KEY) as c:
            task = pb.Task(generate=pb.GenerateSpec(prompt="x"))
            events = [e async for e in c.submit([task], credentials={"openai": "sk-wrong-token"})]
        calls = fake.stats("sk-wrong-token")["calls"]
    result = next(e.result for e in events if e.HasField("result"))
    assert result.state == pb.FAILED and result.error.code == "AUTH"
    assert "sk-wrong-token" not in result.error.message
    assert calls == 1


async def test_race_cancels_the_loser_at_the_provider(mesh_factory):
    async with FakeProviders(latency=0.05) as fake:
        m = provider_mesh(mesh_factory, fake.url, "replicate", IMAGEMESH_HEDGE_DELAY="0.3")
        fake.control(token="slow-token", latency=30)
        async with Client(m.address, CLIENT_KEY) as c:
            task = pb.Task(generate=pb.GenerateSpec(prompt="x", providers=["replicate", "fal"], race=True))
            events = [e async for e in c.submit([task], credentials={"replicate": "slow-token", "fal": TOKEN})]
        await fake.wait_until(lambda s: len(s["tokens"].get("slow-token", {}).get("cancelled", [])) == 1, timeout=15)
    result = next(e.result for e in events if e.HasField("result"))
    assert result.state == pb.SUCCEEDED and result.provider == "fal"


async def test_admin_sees_keys_and_changes_a_limit(mesh_factory):
    async with FakeProviders(latency=0.05) as fake:
        m = provider_mesh(mesh_factory, fake.url, "replicate", IMAGEMESH_REPLICATE_TOKEN="r8_server_token_xyz",
                          IMAGEMESH_KEY_ALIASES="")
        async with Client(m.address, ADMIN_KEY) as admin:
            events = [e async for e in admin.submit([pb.Task(generate=pb.GenerateSpec(prompt="x"))])]
            assert events[-1].summary.succeeded == 1
            keys = (await admin.keys()).keys
            server_key = next(k for k in keys if k.alias == "replicate")
            assert server_key.limit == 8 and "r8_server" not in server_key.id
            changed = await admin.set_key_limit("replicate", 2)
            assert changed.limit == 2
            keys = (await admin.keys()).keys
            assert next(k for k in keys if k.alias == "replicate").limit == 2
            providers = {p.name: p for p in (await admin.providers()).providers}
            assert providers["replicate"].circuit == "closed" and providers["replicate"].recent_successes >= 1


async def test_identical_tasks_in_flight_run_once_and_every_caller_gets_the_result(mesh_factory):
    import asyncio

    async with FakeProviders(latency=1.0) as fake:
        m = provider_mesh(mesh_factory, fake.url, "replicate")
        spec = pb.GenerateSpec(prompt="the same fox", input={"seed": 3})
        async with Client(m.address, CLIENT_KEY) as c:
            async def run(name: str, labels: dict[str, str]):
                task = pb.Task(output_filename=name, idempotency_key="fox-1", generate=spec, labels=labels)
                return [e async for e in c.submit([task], credentials={"replicate": TOKEN})]
            first, second = await asyncio.gather(run("a.png", {"who": "a"}), run("b.png", {"who": "b"}))
        jobs = fake.stats(TOKEN)["jobs"]
    a = next(e.result for e in first if e.HasField("result"))
    b = next(e.result for e in second if e.HasField("result"))
    assert jobs == 1, "identical in-flight tasks ran once"
    assert a.state == b.state == pb.SUCCEEDED
    assert sorted([a.deduplicated, b.deduplicated]) == [False, True]
    assert a.files[0].object and a.files[0].object == b.files[0].object, "one stored output, shared"
    assert a.files[0].filename == "a.png" and b.files[0].filename == "b.png"
    assert a.labels["who"] == "a" and b.labels["who"] == "b"


async def test_a_spent_daily_budget_fails_tasks_with_rate_limited(mesh_factory):
    async with FakeProviders(latency=0.02) as fake:
        m = provider_mesh(mesh_factory, fake.url, "replicate", IMAGEMESH_KEY_DAILY_BUDGETS="replicate=2")
        async with Client(m.address, CLIENT_KEY) as c:
            tasks = [pb.Task(generate=pb.GenerateSpec(prompt=f"b{i}")) for i in range(3)]
            events = [e async for e in c.submit(tasks, credentials={"replicate": TOKEN})]
        jobs = fake.stats(TOKEN)["jobs"]
    results = [e.result for e in events if e.HasField("result")]
    assert sorted(r.state for r in results) == [pb.SUCCEEDED, pb.SUCCEEDED, pb.FAILED]
    failed = next(r for r in results if r.state == pb.FAILED)
    assert failed.error.code == "RATE_LIMITED" and "daily budget of 2" in failed.error.message
    assert jobs == 2
