"""The fake provider server as a separate process: how other tests and benchmarks use it."""

from __future__ import annotations

import asyncio
import time

import httpx

from gen_worker.providers import GenerateRequest, ReplicateProvider
from tests.conftest import python_env
from tests.fakes.provider_server import FakeProviderProcess


async def test_process_serves_control_stats_and_many_concurrent_jobs():
    with FakeProviderProcess("--latency", "0.05", "--valid-tokens", "k1,k2",
                             env=python_env()) as fake:
        async with httpx.AsyncClient(base_url=fake.url) as http:
            assert (await http.post("/_control", json={"token": "k2", "latency": 0.2})).status_code == 200
            provider = ReplicateProvider(fake.url)
            deadline = time.monotonic() + 30
            started = time.monotonic()
            results = await asyncio.gather(*(
                provider.generate(GenerateRequest(f"p{i}", "acme/painter"), "k1" if i % 2 else "k2",
                                  deadline) for i in range(200)))
            elapsed = time.monotonic() - started
            await provider.aclose()
            stats = (await http.get("/_stats")).json()
    assert all(len(outputs) == 1 for outputs in results)
    assert stats["tokens"]["k1"]["jobs"] == 100 and stats["tokens"]["k2"]["jobs"] == 100
    assert stats["total"]["in_flight"] == 0 and stats["total"]["completed"] == 200
    assert stats["tokens"]["k1"]["max_in_flight"] > 1  # they really overlapped
    assert elapsed < 20
