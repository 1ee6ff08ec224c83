"""Fault injection with real processes: every accepted task reaches exactly one final result.

Each test kills or stops real gateway / worker / Redis processes while a batch runs and checks
what the client received: one result per task, none twice, and the batch's summary.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from imagemesh.client import Client, generate
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.conftest import RedisServer
from tests.processes import CLIENT_KEY, Mesh

pytestmark = pytest.mark.faults


def check_exactly_once(events, total: int) -> list[pb.TaskResult]:
    results = [e.result for e in events if e.HasField("result")]
    indexes = [r.task_index for r in results]
    assert len(indexes) == len(set(indexes)), "a task was delivered twice"
    assert sorted(indexes) == list(range(total)), "a task never reached a final result"
    assert len({e.cursor for e in events}) == len(events), "an event was delivered twice"
    assert events[-1].HasField("summary") and events[-1].summary.total == total
    return results


async def test_worker_killed_every_second_loses_and_duplicates_nothing(mesh_factory):
    m = mesh_factory(IMAGEMESH_CAPACITY="8", IMAGEMESH_HEARTBEAT_INTERVAL="0.5", IMAGEMESH_MAX_ATTEMPTS="10")
    m.start_gateway()
    workers = [m.start_worker(), m.start_worker()]
    tasks = [generate(f"t{i}", width=16, height=16, latency_ms=100) for i in range(500)]
    kills = 0

    async def killer():
        nonlocal kills
        while True:
            await asyncio.sleep(1.0)
            victim = workers.pop(0)
            victim.kill()
            kills += 1
            workers.append(m.start_worker())

    async with Client(m.address, CLIENT_KEY) as c:
        chaos = asyncio.create_task(killer())
        try:
            events = [e async for e in c.submit(tasks)]
        finally:
            chaos.cancel()
    results = check_exactly_once(events, 500)
    assert kills >= 3
    assert {r.state for r in results} == {pb.SUCCEEDED}
    assert max(r.attempts for r in results) > 1, "no task was ever re-dispatched: the kills missed"


async def test_gateway_killed_mid_batch_client_reattaches_on_the_other(mesh_factory):
    m = mesh_factory(IMAGEMESH_CAPACITY="8", IMAGEMESH_LEASE_TTL="1", IMAGEMESH_HEARTBEAT_INTERVAL="0.5")
    g1, g2 = m.start_gateway(), m.start_gateway()
    m.start_worker(gateway=g1)
    m.start_worker(gateway=g2)
    tasks = [generate(f"t{i}", width=16, height=16, latency_ms=50) for i in range(300)]
    events = []
    async with Client(g1.values["GATEWAY"], CLIENT_KEY) as c1:
        stream = c1.submit(tasks, batch_id="survives-a-gateway")
        async for e in stream:
            events.append(e)
            if len(events) == 30:
                break
    g1.kill()
    killed_at = time.monotonic()
    async with Client(g2.values["GATEWAY"], CLIENT_KEY) as c2:
        async for e in c2.watch("survives-a-gateway", events[-1].cursor):
            events.append(e)
    recovery = time.monotonic() - killed_at
    results = check_exactly_once(events, 300)
    assert {r.state for r in results} == {pb.SUCCEEDED}
    print(f"recovered {300 - 29} results in {recovery:.1f}s after the gateway kill")


async def test_redis_restart_with_aof_loses_nothing(tmp_path):
    redis = RedisServer(tmp_path / "aof", appendonly=True)
    (tmp_path / "aof").mkdir()
    redis.start()
    m = Mesh(redis.url, tmp_path, IMAGEMESH_CAPACITY="8")
    try:
        m.start_gateway()
        m.start_worker()
        tasks = [generate(f"t{i}", width=16, height=16, latency_ms=50) for i in range(200)]
        async with Client(m.address, CLIENT_KEY, reattach_attempts=60) as c:
            events = []
            async for e in c.submit(tasks, batch_id="survives-redis"):
                events.append(e)
                if len(events) == 40:
                    redis.restart()
        check_exactly_once(events, 200)
    finally:
        m.close()
        redis.stop()


async def test_sigterm_worker_finishes_in_flight_work_and_exits_zero(mesh_factory):
    m = mesh_factory(IMAGEMESH_CAPACITY="4", IMAGEMESH_DRAIN_SECONDS="10")
    m.start_gateway()
    w = m.start_worker()
    async with Client(m.address, CLIENT_KEY) as c:
        stream = c.submit([generate(f"t{i}", width=16, height=16, latency_ms=1000) for i in range(4)])
        await anext(stream)
        await asyncio.sleep(0.5)  # all four are running on the worker
        w.signal(signal.SIGTERM)
        events = [e async for e in stream]
    assert w.wait(15) == 0
    results = [e.result for e in events if e.HasField("result")]
    assert len(results) == 4 and {r.state for r in results} == {pb.SUCCEEDED}
    assert {r.attempts for r in results} == {1}, "drained work finished where it ran"


async def test_sigterm_worker_hands_back_what_it_cannot_finish(mesh_factory):
    m = mesh_factory(IMAGEMESH_CAPACITY="2", IMAGEMESH_DRAIN_SECONDS="0.5")
    m.start_gateway()
    w = m.start_worker()
    async with Client(m.address, CLIENT_KEY) as c:
        stream = c.submit([generate(f"t{i}", width=16, height=16, latency_ms=3000) for i in range(2)])
        await anext(stream)
        await asyncio.sleep(0.5)
        w.signal(signal.SIGTERM)
        assert w.wait(15) == 0
        m.start_worker()
        events = [e async for e in stream]
    results = [e.result for e in events if e.HasField("result")]
    assert len(results) == 2 and {r.state for r in results} == {pb.SUCCEEDED}
    assert {r.attempts for r in results} == {2}, "handed-back work ran again elsewhere"


async def test_sigterm_gateway_drains_and_exits_zero(mesh_factory):
    m = mesh_factory(IMAGEMESH_CAPACITY="4", IMAGEMESH_DRAIN_SECONDS="10")
    g = m.start_gateway()
    m.start_worker()
    async with Client(m.address, CLIENT_KEY) as c:
        stream = c.submit([generate(f"t{i}", width=16, height=16, latency_ms=500) for i in range(4)], batch_id="drain-gw")
        first = await anext(stream)
        await asyncio.sleep(0.2)
        g.signal(signal.SIGTERM)
        assert g.wait(20) == 0
    g2 = m.start_gateway()
    m.start_worker(gateway=g2)
    async with Client(g2.values["GATEWAY"], CLIENT_KEY) as c:
        events = [first] + [e async for e in c.watch("drain-gw", first.cursor)]
    check_exactly_once(events, 4)
