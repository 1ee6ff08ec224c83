"""The key limit holds at the provider while workers and gateways are killed (invariant 1),
and nothing accepted is lost meanwhile (invariant 4)."""

from __future__ import annotations

import asyncio
import random

import pytest

from imagemesh.client import Client
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.fakes.provider_server import FakeProviders
from tests.processes import CLIENT_KEY

pytestmark = pytest.mark.faults

TOKEN = "r8_chaos_token_0123456789abcdefghijklmnopqrstu"


async def test_limit_8_holds_at_the_provider_while_workers_and_a_gateway_are_killed(mesh_factory):
    async with FakeProviders(latency=[0.05, 0.3]) as fake:
        m = mesh_factory(IMAGEMESH_DEFAULT_PROVIDERS="replicate", IMAGEMESH_KEY_LIMITS="replicate=8",
                         IMAGEMESH_REPLICATE_BASE_URL=fake.url, IMAGEMESH_CAPACITY="6",
                         IMAGEMESH_ALLOW_PRIVATE_URLS="1",  # outputs are copied from the fake on loopback
                         IMAGEMESH_LEASE_TTL="2", IMAGEMESH_MAX_JOB_RUNTIME="4",
                         IMAGEMESH_HEARTBEAT_INTERVAL="0.5", IMAGEMESH_MAX_ATTEMPTS="20")
        g1, g2 = m.start_gateway(), m.start_gateway()
        workers = [m.start_worker(gateway=g1), m.start_worker(gateway=g2), m.start_worker(gateway=g2)]
        rng = random.Random(7)
        kills = 0

        async def chaos():
            nonlocal kills
            while True:
                await asyncio.sleep(rng.uniform(0.5, 1.0))
                victim = workers.pop(rng.randrange(len(workers)))
                victim.kill()
                kills += 1
                workers.append(m.start_worker(gateway=g2))
                if kills == 3:
                    g1.kill()  # its workers reconnect nowhere; g2 claims its entries

        tasks = [pb.Task(output_filename=f"c{i}.png", generate=pb.GenerateSpec(prompt=f"chaos {i}"))
                 for i in range(300)]
        async with Client(g2.values["GATEWAY"], CLIENT_KEY, reattach_attempts=100) as c:
            trouble = asyncio.create_task(chaos())
            try:
                events = [e async for e in c.submit(tasks, credentials={"replicate": TOKEN})]
            finally:
                trouble.cancel()
        stats = fake.stats(TOKEN)
    results = [e.result for e in events if e.HasField("result")]
    assert sorted(r.task_index for r in results) == list(range(300))
    assert {r.state for r in results} == {pb.SUCCEEDED}
    assert kills >= 3
    assert stats["max_in_flight"] <= 8, stats
    assert stats["max_in_flight"] >= 6, "the limit was barely used"
