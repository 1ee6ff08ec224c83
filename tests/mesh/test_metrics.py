"""What the processes export: the autoscaling signal, and exposition that promtool accepts."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imagemesh.client import Client
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.fakes.provider_server import FakeProviders
from tests.processes import ADMIN_KEY, CLIENT_KEY

TOKEN = "r8_metrics_token_0123456789abcdefghijklmnopq"


async def scrape(proc) -> str:
    async with httpx.AsyncClient() as http:
        reply = await http.get(f"http://127.0.0.1:{proc.values['METRICS_PORT']}/metrics")
    reply.raise_for_status()
    return reply.text


def sample(text: str, name: str, **labels) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


async def wait_for_gauge(proc, name: str, value: float, **labels) -> None:
    seen = None
    for _ in range(60):
        seen = sample(await scrape(proc), name, **labels)
        if seen == value:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}{labels} stayed {seen}, expected {value}")


async def test_schedulable_backlog_is_zero_while_the_key_is_saturated_and_rises_when_it_frees(mesh_factory):
    async with FakeProviders(latency=3.0) as fake:
        m = mesh_factory(IMAGEMESH_DEFAULT_PROVIDERS="replicate", IMAGEMESH_KEY_LIMITS="replicate=2",
                         IMAGEMESH_REPLICATE_BASE_URL=fake.url, IMAGEMESH_CAPACITY="2")
        gw = m.start_gateway()
        m.start_worker()
        async with Client(m.address, CLIENT_KEY) as c, Client(m.address, ADMIN_KEY) as admin:
            tasks = [pb.Task(generate=pb.GenerateSpec(prompt=f"p{i}")) for i in range(10)]
            stream = c.submit(tasks, credentials={"replicate": TOKEN})
            accepted = await anext(stream)
            await fake.wait_until(lambda s: s["tokens"].get(TOKEN, {}).get("in_flight") == 2)
            # 8 queued, every one waiting for the saturated key: nothing a new worker could start.
            await wait_for_gauge(gw, "imagemesh_queue_depth", 8, pool="generate")
            await wait_for_gauge(gw, "imagemesh_schedulable_backlog", 0, pool="generate")
            key = next(k for k in (await admin.keys()).keys if k.provider == "replicate")
            await admin.set_key_limit(key.id, 5)
            # The key now has 3 free slots and the only worker is full: 3 tasks could start.
            await wait_for_gauge(gw, "imagemesh_schedulable_backlog", 3, pool="generate")
            await c.cancel(accepted.batch_id)


async def test_every_process_metrics_pass_promtool(mesh_factory, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `apt-get install prometheus` (make test installs it)")
    m = mesh_factory(IMAGEMESH_CAPACITY="2")
    gw = m.start_gateway()
    worker = m.start_worker()
    enhancer = m.start_worker("enhance_worker", IMAGEMESH_FALLBACK="1", IMAGEMESH_WEIGHTS_DIR=str(tmp_path))
    async with Client(m.address, CLIENT_KEY) as c:
        events = [e async for e in c.submit([pb.Task(generate=pb.GenerateSpec(prompt="x", input={"width": 16}))])]
    assert events[-1].summary.succeeded == 1
    await asyncio.sleep(1.2)  # one housekeeping round: the queue gauges are filled in
    for proc in (gw, worker, enhancer):
        text = await scrape(proc)
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, f"{proc.name}: {check.stdout}{check.stderr}"
        assert TOKEN not in text
    gw_text = await scrape(gw)
    for name in ("imagemesh_tasks_accepted_total", "imagemesh_schedulable_backlog", "imagemesh_queue_depth",
                 "imagemesh_pool_capacity", "imagemesh_pool_utilization_ratio"):
        assert name in gw_text
    assert sample(gw_text, "imagemesh_tasks_finished_total", pool="generate", outcome="succeeded") == 1.0


async def test_tasks_cancelled_while_queued_are_counted_as_finished(mesh_factory):
    """Every accepted task is counted once as finished: here 13 accepted = 8 succeeded + 5
    cancelled while still in the queue (no worker took them)."""
    m = mesh_factory(IMAGEMESH_CAPACITY="8", IMAGEMESH_STORAGE_URL="none")
    gw = m.start_gateway()
    m.start_worker()
    async with Client(m.address, CLIENT_KEY) as c:
        done = [e async for e in c.submit([pb.Task(generate=pb.GenerateSpec(prompt=f"ok{i}")) for i in range(8)])]
        assert done[-1].summary.succeeded == 8
    m.workers[0].kill()
    async with Client(m.address, CLIENT_KEY) as c:
        stream = c.submit([pb.Task(generate=pb.GenerateSpec(prompt=f"queued{i}")) for i in range(5)])
        accepted = await anext(stream)
        await c.cancel(accepted.batch_id)
        events = [accepted] + [e async for e in stream]
    assert events[-1].summary.cancelled == 5
    text = await scrape(gw)
    accepted_n = sample(text, "imagemesh_tasks_accepted_total", pool="generate")
    finished = sum(sample(text, "imagemesh_tasks_finished_total", pool="generate", outcome=o) or 0
                   for o in ("succeeded", "failed", "cancelled"))
    assert accepted_n == 13 and finished == 13, text
    assert sample(text, "imagemesh_tasks_finished_total", pool="generate", outcome="cancelled") == 5
