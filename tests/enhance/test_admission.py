"""Admission by cost, and the retry with smaller tiles after the device runs out of memory."""

from __future__ import annotations

import asyncio

import pytest

from enhance_worker.admission import CostBudget, image_cost
from enhance_worker.engine import EnhanceEngine
from enhance_worker.job import Enhanced
from enhance_worker.lanczos import LanczosModels
from enhance_worker.models import DeviceOutOfMemory
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.enhance.conftest import assignment, image_bytes, settings

pytestmark = pytest.mark.enhance


def test_cost_is_megapixels_times_upscale_squared():
    assert image_cost(1000, 1000, 2) == pytest.approx(4.0)
    assert image_cost(500, 200, 4) == pytest.approx(1.6)


async def test_work_beyond_the_budget_waits_in_fifo_order():
    budget = CostBudget(4.0)
    await budget.acquire(3.0)
    order: list[str] = []

    async def take(name, cost):
        await budget.acquire(cost)
        order.append(name)

    big = asyncio.create_task(take("big", 2.0))
    small = asyncio.create_task(take("small", 1.0))  # would fit now, but must not overtake "big"
    await asyncio.sleep(0.01)
    assert order == [] and budget.waiting == 2
    budget.release(3.0)
    await asyncio.gather(big, small)
    assert order == ["big", "small"] and budget.in_use == pytest.approx(3.0)


async def test_an_image_larger_than_the_budget_runs_alone():
    budget = CostBudget(1.0)
    await budget.acquire(0.5)
    huge = asyncio.create_task(budget.acquire(10.0))
    await asyncio.sleep(0.01)
    assert not huge.done()
    budget.release(0.5)
    await asyncio.wait_for(huge, 1)
    assert budget.holders == 1 and budget.in_use == 10.0


async def test_a_cancelled_waiter_leaves_the_queue_and_wakes_the_next():
    budget = CostBudget(2.0)
    await budget.acquire(1.5)
    blocked = asyncio.create_task(budget.acquire(2.0))
    behind = asyncio.create_task(budget.acquire(0.5))
    await asyncio.sleep(0.01)
    assert budget.waiting == 2 and not behind.done()
    blocked.cancel()
    await asyncio.wait_for(behind, 1)
    assert budget.waiting == 0 and budget.in_use == pytest.approx(2.0)


class RunsOutOfMemory(LanczosModels):
    """The fallback resize, made to fail like a small GPU: out of memory above `max_tile` pixels."""

    def __init__(self, max_tile: int) -> None:
        self.max_tile = max_tile
        self.tiles: list[int] = []
        self.emptied = 0

    def enhance(self, image, options, *, tile=0, should_stop=None) -> Enhanced:
        self.tiles.append(tile)
        if tile == 0 or tile > self.max_tile:
            raise DeviceOutOfMemory("CUDA out of memory (simulated)")
        return super().enhance(image, options, tile=tile)

    def empty_cache(self) -> None:
        self.emptied += 1


async def _engine_on(models, tmp_path) -> EnhanceEngine:
    eng = await EnhanceEngine.create(settings(tmp_path, fallback=True, oom_retries=3))
    eng.models = models
    eng._oom_errors = (DeviceOutOfMemory,)
    return eng


async def test_out_of_memory_retries_with_halved_tiles_then_succeeds(tmp_path):
    models = RunsOutOfMemory(max_tile=64)
    eng = await _engine_on(models, tmp_path)
    try:
        result = await eng.run(assignment(image=image_bytes(256, 256), upscale=2))
        assert result.state == pb.SUCCEEDED
        assert models.tiles == [0, 128, 64] and models.emptied == 2
    finally:
        await eng.close()


async def test_out_of_memory_after_the_last_retry_fails_retryably_and_the_engine_goes_on(tmp_path):
    models = RunsOutOfMemory(max_tile=8)
    eng = await _engine_on(models, tmp_path)
    try:
        result = await eng.run(assignment(image=image_bytes(256, 256), upscale=2))
        assert result.state == pb.FAILED and result.error.code == "UNAVAILABLE" and result.error.retryable
        assert "ran out of memory" in result.error.message
        assert models.tiles == [0, 128, 64, 32]
        models.max_tile = 10_000
        assert (await eng.run(assignment(image=image_bytes(16, 16), upscale=2))).state == pb.SUCCEEDED
    finally:
        await eng.close()
