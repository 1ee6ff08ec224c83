"""One test per defect of issue 11 (each failed on the dispatcher before the state machine):
real gateway and worker processes, a real Redis, the fake provider over HTTP.

Crash points between two Redis commands (a gateway SIGKILLed inside a requeue, between a
dedup leader's FINISH and its followers' copies, between a submit's push and its commit) are
covered by the systematic sweep (tests/faults/test_sweep.py), which walks every command.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import redis as sync_redis

from gateway.batches import batch_ref
from imagemesh.client import Client, generate
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import imagemesh_pb2_grpc as pb_grpc
from imagemesh.v1 import worker_pb2 as wpb
from imagemesh.v1 import worker_pb2_grpc as wpb_grpc
from tests.fakes.provider_server import FakeProviders
from tests.processes import CLIENT_KEY, WORKER_KEY

pytestmark = pytest.mark.faults

TOKEN = "r8_regression_token_abcdefghijklmnopqrstuvwxyz"


def results_of(events) -> list[pb.TaskResult]:
    return [e.result for e in events if e.HasField("result")]


def exactly_once(events, total: int) -> list[pb.TaskResult]:
    results = results_of(events)
    assert sorted(r.task_index for r in results) == list(range(total)), "every task exactly one result"
    assert events[-1].HasField("summary") and events[-1].summary.total == total, "the summary comes last"
    return results


async def test_a_redis_error_while_assigning_does_not_strand_the_task(mesh_factory, redis_server):
    """Defect 1: reading the caller's sealed token failed after the attempt was in flight, and
    the attempt stayed there with no worker and a live lease for good."""
    admin = sync_redis.Redis.from_url(redis_server.url)
    admin.execute_command("ACL", "SETUSER", "gw", "on", ">gwpass", "~*", "&*", "+@all")
    url = f"redis://gw:gwpass@127.0.0.1:{redis_server.port}/0"
    try:
        async with FakeProviders(latency=0.05) as fake:
            m = mesh_factory(IMAGEMESH_DEFAULT_PROVIDERS="replicate", IMAGEMESH_REPLICATE_BASE_URL=fake.url,
                             IMAGEMESH_ALLOW_PRIVATE_URLS="1", IMAGEMESH_KEY_LIMITS="replicate=4",
                             IMAGEMESH_LEASE_TTL="2", IMAGEMESH_MAX_JOB_RUNTIME="20")
            m.start_gateway(IMAGEMESH_REDIS_URL=url)
            async with Client(m.address, CLIENT_KEY) as c:
                tasks = [generate(f"acl {i}", f"a{i}.png") for i in range(6)]
                stream = c.submit(tasks, credentials={"replicate": TOKEN}, batch_id="acl-denied")
                first = await anext(stream)
                assert first.HasField("accepted")
                admin.execute_command("ACL", "SETUSER", "gw", "-hgetall")  # sealed tokens can't be read
                m.start_worker()  # dispatch starts now, and fails to read the caller's token
                await asyncio.sleep(3.0)
                assert fake.stats(TOKEN)["jobs"] == 0, "nothing can run without the token"
                admin.execute_command("ACL", "SETUSER", "gw", "+hgetall")
                async with asyncio.timeout(30):
                    events = [first] + [e async for e in stream]
        results = exactly_once(events, 6)
        assert {r.state for r in results} == {pb.SUCCEEDED}, [r.error.message for r in results]
    finally:
        admin.execute_command("ACL", "DELUSER", "gw")


async def test_concurrent_submits_of_one_batch_id_run_each_task_once(mesh_factory):
    """Defect 4: two SubmitBatch calls with one client-chosen id queued every task twice."""
    async with FakeProviders(latency=0.05) as fake:
        m = mesh_factory(IMAGEMESH_DEFAULT_PROVIDERS="replicate", IMAGEMESH_REPLICATE_BASE_URL=fake.url,
                         IMAGEMESH_ALLOW_PRIVATE_URLS="1", IMAGEMESH_CAPACITY="16")
        g1, g2 = m.start_gateway(), m.start_gateway()
        m.start_worker(gateway=g1)
        m.start_worker(gateway=g2)
        tasks = [generate(f"twice {i}", f"t{i}.png") for i in range(200)]
        async with Client(g1.values["GATEWAY"], CLIENT_KEY) as c1, Client(g2.values["GATEWAY"], CLIENT_KEY) as c2:
            async def run(c):
                return [e async for e in c.submit(tasks, credentials={"replicate": TOKEN}, batch_id="same-id")]
            runs = await asyncio.gather(run(c1), run(c2), run(c1))
        jobs = fake.stats(TOKEN)["jobs"]
    for events in runs:
        exactly_once(events, 200)
    assert jobs == 200, f"{jobs} provider jobs for 200 tasks"


async def test_dedup_followers_are_served_however_long_the_leader_waited(mesh_factory):
    """Related: the leader's key expired (ttl max_job_runtime x max_attempts) while it queued,
    and its followers were never served."""
    async with FakeProviders(latency=0.05) as fake:
        m = mesh_factory(IMAGEMESH_DEFAULT_PROVIDERS="replicate", IMAGEMESH_REPLICATE_BASE_URL=fake.url,
                         IMAGEMESH_ALLOW_PRIVATE_URLS="1", IMAGEMESH_LEASE_TTL="1",
                         IMAGEMESH_MAX_JOB_RUNTIME="1", IMAGEMESH_MAX_ATTEMPTS="2")
        m.start_gateway()
        spec = pb.GenerateSpec(prompt="same", input={"seed": 1})
        async with Client(m.address, CLIENT_KEY) as c:
            async def run(name):
                task = pb.Task(output_filename=name, idempotency_key="k1", generate=spec)
                return [e async for e in c.submit([task], credentials={"replicate": TOKEN})]
            leader = asyncio.create_task(run("lead.png"))
            await asyncio.sleep(0.5)
            follower = asyncio.create_task(run("follow.png"))
            await asyncio.sleep(3.5)  # no worker: both wait longer than the old ttl of 2 s
            m.start_worker()
            async with asyncio.timeout(30):
                a, b = await leader, await follower
        assert fake.stats(TOKEN)["jobs"] == 1
    ra, rb = exactly_once(a, 1)[0], exactly_once(b, 1)[0]
    assert ra.state == rb.state == pb.SUCCEEDED and rb.deduplicated


async def test_a_worker_granting_impossible_credits_is_refused_and_dispatch_goes_on(mesh_factory):
    """Related: a worker sending credits=-100000 stalled all generate dispatch on its gateway."""
    m = mesh_factory(IMAGEMESH_CAPACITY="4")
    m.start_gateway()
    m.start_worker()
    async with grpc.aio.insecure_channel(m.address) as channel:
        link = wpb_grpc.WorkerLinkStub(channel)
        call = link.Connect(metadata=(("authorization", f"Bearer {WORKER_KEY}"),))
        await call.write(wpb.WorkerMessage(hello=wpb.WorkerHello(worker_id="rogue", pool="generate", capacity=4),
                                           credits=4))
        welcome = await call.read()
        assert welcome.HasField("welcome")
        await call.write(wpb.WorkerMessage(credits=-100000))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    break
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "credits: -100000" in refused.value.details()
    async with Client(m.address, CLIENT_KEY) as c, asyncio.timeout(30):
        events = [e async for e in c.submit([generate(f"after {i}", f"x{i}.png") for i in range(20)])]
    assert {r.state for r in exactly_once(events, 20)} == {pb.SUCCEEDED}


async def test_bad_and_future_cursors_answer_invalid_argument_at_once(mesh_factory):
    """Related: a malformed cursor answered UNAVAILABLE (retried 20x by the client) and a cursor
    beyond the log hung until the log expired."""
    m = mesh_factory()
    m.start_gateway()
    m.start_worker()
    async with Client(m.address, CLIENT_KEY) as c:
        events = [e async for e in c.submit([generate("c", "c.png")], batch_id="cursors")]
    ms = int(events[-1].cursor.split("-")[0])
    async with grpc.aio.insecure_channel(m.address) as channel:
        api = pb_grpc.ImageMeshStub(channel)
        md = (("authorization", f"Bearer {CLIENT_KEY}"),)
        for cursor, words in (("not-a-cursor", "not a cursor"), (f"{ms + 3_600_000}-0", "beyond")):
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in api.WatchBatch(pb.WatchBatchRequest(batch_id="cursors", after_cursor=cursor),
                                              metadata=md, timeout=10):
                    pass
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
            assert words in err.value.details() and "after_cursor" in err.value.details()
            assert time.monotonic() - started < 2
        # The last cursor itself is fine: nothing after it, the stream ends at once.
        after = [e async for e in api.WatchBatch(pb.WatchBatchRequest(batch_id="cursors",
                                                                      after_cursor=events[-1].cursor),
                                                 metadata=md, timeout=10)]
        assert after == []


async def test_resource_exhausted_inside_a_stream_session_answers_at_once(mesh_factory):
    """Related: an overloaded tenant's Stream session hung instead of answering."""
    m = mesh_factory(IMAGEMESH_MAX_QUEUED_PER_TENANT="2")
    m.start_gateway()
    m.start_worker()
    async with grpc.aio.insecure_channel(m.address) as channel:
        api = pb_grpc.ImageMeshStub(channel)
        call = api.Stream(metadata=(("authorization", f"Bearer {CLIENT_KEY}"),), timeout=20)
        await call.write(pb.StreamRequest(open=pb.StreamOpen(batch_id="busy-session")))
        slow = generate("slow", "s.png", latency_ms=5000)
        for _ in range(3):
            await call.write(pb.StreamRequest(task=slow))
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            while (await call.read()) is not grpc.aio.EOF:
                pass
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
        assert time.monotonic() - started < 4, "answered at once, not after the accepted tasks finished"


async def test_a_task_whose_worker_keeps_dying_fails_after_max_attempts(mesh_factory):
    """max_attempts is reached: the task ends FAILED / WORKER_LOST, once."""
    m = mesh_factory(IMAGEMESH_MAX_ATTEMPTS="2", IMAGEMESH_HEARTBEAT_INTERVAL="0.5")
    m.start_gateway()
    async with Client(m.address, CLIENT_KEY) as c:
        stream = c.submit([generate("doomed", "d.png", latency_ms=60_000)], batch_id="doomed")
        first = await anext(stream)
        r = sync_redis.Redis.from_url(m.redis_url)
        for attempt in (1, 2):
            w = m.start_worker()
            deadline = time.monotonic() + 20
            while not r.hexists(f"im:{{{batch_ref('team-a', 'doomed')}}}:tasks", f"0:run:{attempt}"):  # START of this attempt
                assert time.monotonic() < deadline, f"attempt {attempt} never started"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            w.kill()
        async with asyncio.timeout(30):
            events = [first] + [e async for e in stream]
    result, = exactly_once(events, 1)
    assert result.state == pb.FAILED and result.error.code == "WORKER_LOST", result
    assert "max_attempts=2" in result.error.message and result.attempts == 2
