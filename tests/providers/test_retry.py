"""The retry loop's rules, with a virtual clock (no real sleeping), then against the fake."""

from __future__ import annotations

import asyncio
import time

import pytest

from gen_worker.providers import GenerateRequest, ReplicateProvider
from gen_worker.retry import (ConstantBackoff, ExponentialBackoff, FullJitterBackoff, RetryPolicy,
                              with_retries)
from imagemesh import errors
from tests.conftest import free_port
from tests.fakes.provider_server import FakeProviders


class VirtualTime:
    """A clock that moves only when the retry loop sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(*failures: BaseException, result: str = "ok"):
    """A call that raises each of `failures` in turn, then returns `result`."""
    queue = list(failures)
    calls = []

    async def call():
        calls.append(1)
        if queue:
            raise queue.pop(0)
        return result
    call.calls = calls  # type: ignore[attr-defined]
    return call


POLICY = RetryPolicy(max_tries=4, backoff=ConstantBackoff(0.1))


@pytest.mark.parametrize("failure", [
    errors.ProviderFailed("HTTP 503"), errors.RateLimited("HTTP 429"),
    errors.Timeout("deadline"), errors.Unavailable("connection refused")])
async def test_retryable_failures_are_retried_until_success(failure):
    vt = VirtualTime()
    call = failing(failure, failure)
    result, tries = await with_retries(call, policy=POLICY, deadline=vt.now + 60,
                                       clock=vt.clock, sleep=vt.sleep)
    assert (result, tries) == ("ok", 3)
    assert vt.sleeps == [0.1, 0.1]


@pytest.mark.parametrize("failure", [
    errors.InvalidInput("HTTP 422"), errors.AuthFailed("HTTP 401"),
    errors.ProviderFailed("prediction failed", retryable=False), ValueError("adapter bug")])
async def test_input_auth_job_failures_and_bugs_are_never_retried(failure):
    vt = VirtualTime()
    call = failing(failure)
    with pytest.raises(type(failure)) as info:
        await with_retries(call, policy=POLICY, deadline=vt.now + 60, clock=vt.clock, sleep=vt.sleep)
    assert info.value.tries == 1
    assert len(call.calls) == 1 and vt.sleeps == []


async def test_tries_are_counted_and_the_last_error_is_raised():
    vt = VirtualTime()
    call = failing(*(errors.ProviderFailed(f"HTTP 50{i}") for i in range(10)))
    with pytest.raises(errors.ProviderFailed) as info:
        await with_retries(call, policy=POLICY, deadline=vt.now + 60, clock=vt.clock, sleep=vt.sleep)
    assert info.value.tries == 4
    assert info.value.message == "HTTP 503"
    assert len(vt.sleeps) == 3


async def test_retry_after_is_honoured_when_longer_than_the_backoff():
    vt = VirtualTime()
    call = failing(errors.RateLimited("429", retry_after=2.5), errors.RateLimited("429", retry_after=0.0))
    _, tries = await with_retries(call, policy=POLICY, deadline=vt.now + 60, clock=vt.clock,
                                  sleep=vt.sleep)
    assert tries == 3
    assert vt.sleeps == [2.5, 0.1]


async def test_gives_up_with_the_last_error_instead_of_sleeping_past_the_deadline():
    vt = VirtualTime()
    call = failing(errors.RateLimited("429", retry_after=30))
    with pytest.raises(errors.RateLimited) as info:
        await with_retries(call, policy=POLICY, deadline=vt.now + 10, clock=vt.clock, sleep=vt.sleep)
    assert info.value.tries == 1
    assert vt.sleeps == []  # did not sleep at all


async def test_backoff_that_would_cross_the_deadline_stops_the_loop():
    vt = VirtualTime()
    policy = RetryPolicy(max_tries=10, backoff=ExponentialBackoff(base=1, cap=100))
    call = failing(*(errors.Unavailable("refused") for _ in range(10)))
    with pytest.raises(errors.Unavailable) as info:
        await with_retries(call, policy=policy, deadline=vt.now + 5, clock=vt.clock, sleep=vt.sleep)
    # Sleeps 1 and 2 fit before the deadline (t+3); the next (4) would end at t+7 > t+5.
    assert vt.sleeps == [1, 2]
    assert info.value.tries == 3


async def test_deadline_already_passed_means_no_attempt():
    vt = VirtualTime()
    call = failing()
    with pytest.raises(errors.Timeout) as info:
        await with_retries(call, policy=POLICY, deadline=vt.now, clock=vt.clock, sleep=vt.sleep)
    assert info.value.tries == 0 and call.calls == []


async def test_on_attempt_sees_every_outcome():
    vt = VirtualTime()
    seen = []
    call = failing(errors.Unavailable("refused"))
    await with_retries(call, policy=POLICY, deadline=vt.now + 60, clock=vt.clock, sleep=vt.sleep,
                       on_attempt=lambda n, err: seen.append((n, type(err).__name__)))
    assert seen == [(1, "Unavailable"), (2, "NoneType")]


def test_full_jitter_draws_between_zero_and_the_capped_exponential():
    top = FullJitterBackoff(base=0.2, cap=1.0, rng=lambda: 1.0)
    assert [round(top.compute(n), 3) for n in range(1, 6)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert FullJitterBackoff(base=0.2, cap=1.0, rng=lambda: 0.0).compute(5) == 0.0
    real = RetryPolicy(base=0.2, cap=10).strategy()
    assert all(0 <= real.compute(n) <= min(10, 0.2 * 2 ** (n - 1)) for n in range(1, 10) for _ in range(20))


# --- against the fake provider ---------------------------------------------------------------
FAST = RetryPolicy(max_tries=4, backoff=ConstantBackoff(0.01))


async def test_5xx_and_429_from_the_provider_are_retried_and_retry_after_waited():
    async with FakeProviders(valid_tokens=["tok-r"], latency=0.01) as fake:
        fake.control(errors=[503, {"status": 429, "retry_after": "0.3"}])
        provider = ReplicateProvider(fake.url)
        deadline = time.monotonic() + 20
        started = time.monotonic()
        outputs, tries = await with_retries(
            lambda: provider.generate(GenerateRequest("a cat", "acme/img"), "tok-r", deadline),
            policy=FAST, deadline=deadline)
        await provider.aclose()
    assert tries == 3 and len(outputs) == 1
    assert time.monotonic() - started >= 0.3
    assert fake.stats("tok-r")["jobs"] == 1


async def test_bad_token_fails_once_without_retries():
    async with FakeProviders(valid_tokens=["good"]) as fake:
        provider = ReplicateProvider(fake.url)
        deadline = time.monotonic() + 20
        with pytest.raises(errors.AuthFailed) as info:
            await with_retries(
                lambda: provider.generate(GenerateRequest("a cat", "acme/img"), "bad-token-123",
                                          deadline), policy=FAST, deadline=deadline)
        await provider.aclose()
    assert info.value.tries == 1
    assert fake.stats("bad-token-123")["calls"] == 1


async def test_connection_errors_are_retried_then_reported_unavailable():
    provider = ReplicateProvider(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    deadline = time.monotonic() + 20
    with pytest.raises(errors.Unavailable) as info:
        await with_retries(lambda: provider.generate(GenerateRequest("a cat", "acme/img"), "tok",
                                                     deadline), policy=FAST, deadline=deadline)
    await provider.aclose()
    assert info.value.tries == 4


async def test_cancellation_propagates_through_the_loop():
    started = asyncio.Event()

    async def call():
        started.set()
        await asyncio.sleep(60)

    task = asyncio.ensure_future(with_retries(call, policy=POLICY, deadline=time.monotonic() + 100))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
