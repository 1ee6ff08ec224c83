"""Each adapter against the fake provider server: shapes, cancellation, error mapping, secrecy."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gen_worker.providers import (FalProvider, GenerateRequest, OpenAIProvider, ReplicateProvider,
                                  build_providers)
from gen_worker.providers.http import parse_retry_after
from imagemesh import errors, metrics
from tests.fakes.provider_server import FakeProviders

TOKEN = "sk-test-SECRET-7f3a9c"
MODELS = {"replicate": "acme/painter", "fal": "fal-ai/flux/dev", "openai": "dall-e-3"}


@pytest.fixture
async def fake():
    async with FakeProviders(valid_tokens=[TOKEN], latency=0.02) as server:
        yield server


@pytest.fixture
async def providers(fake):
    built = build_providers({name: fake.url for name in MODELS}, poll_initial=0.02)
    yield built
    for provider in built.values():
        await provider.aclose()


def soon(seconds: float = 10) -> float:
    return time.monotonic() + seconds


# --- success shapes ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
async def test_each_provider_returns_one_output_per_requested_image(providers, fake, name):
    request = GenerateRequest("a lighthouse", MODELS[name], num_outputs=3, inputs={"seed": 7})
    outputs = await providers[name].generate(request, TOKEN, soon())
    assert len(outputs) == 3
    assert all(o.url and o.url.startswith(fake.url + "/files/") for o in outputs)
    assert all(o.content_type == "image/png" for o in outputs)
    assert fake.stats(TOKEN)["jobs"] == 1 and fake.stats(TOKEN)["in_flight"] == 0


async def test_replicate_single_output_string_and_versioned_model(providers, fake):
    outputs = await providers["replicate"].generate(
        GenerateRequest("a lighthouse", "acme/painter:5c7d5dc6dd8bf75c"), TOKEN, soon())
    assert len(outputs) == 1 and outputs[0].url
    job = next(iter(fake.state.jobs.values()))
    assert job.inputs["_version"] == "5c7d5dc6dd8bf75c"
    assert job.inputs["prompt"] == "a lighthouse" and job.inputs["num_outputs"] == 1


async def test_replicate_polls_when_prefer_wait_ends_before_the_job(fake):
    provider = ReplicateProvider(fake.url, prefer_wait=1, poll_initial=0.05)
    outputs = await provider.generate(
        GenerateRequest("slow", "acme/painter", inputs={"_fake_latency": 1.5}), TOKEN, soon())
    await provider.aclose()
    assert len(outputs) == 1
    assert fake.stats(TOKEN)["calls"] >= 2  # the create, then at least one poll


async def test_replicate_and_openai_urls_carry_their_one_hour_expiry(providers):
    now_ms = time.time() * 1000
    for name in ("replicate", "openai"):
        (output,) = await providers[name].generate(
            GenerateRequest("x", MODELS[name]), TOKEN, soon())
        assert now_ms + 55 * 60_000 < output.url_expires_at_ms < now_ms + 61 * 60_000
    (fal_output,) = await providers["fal"].generate(GenerateRequest("x", MODELS["fal"]), TOKEN, soon())
    assert fal_output.url_expires_at_ms == 0


async def test_fal_reports_image_sizes(providers):
    (output,) = await providers["fal"].generate(
        GenerateRequest("x", MODELS["fal"], inputs={"width": 96, "height": 48}), TOKEN, soon())
    assert (output.width, output.height) == (96, 48)


async def test_openai_url_or_b64_json(providers):
    (by_url,) = await providers["openai"].generate(GenerateRequest("x", "dall-e-3"), TOKEN, soon())
    assert by_url.url and by_url.data is None
    outputs = await providers["openai"].generate(
        GenerateRequest("x", "dall-e-3", num_outputs=2,
                        inputs={"response_format": "b64_json", "width": 80, "height": 40}),
        TOKEN, soon())
    assert len(outputs) == 2
    for output in outputs:
        assert output.url is None and output.data.startswith(b"\x89PNG")
        assert (output.width, output.height) == (80, 40)


# --- cancellation -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["replicate", "fal"])
async def test_timeout_cancels_the_remote_job(fake, name):
    fake.control(latency=30)
    provider = build_providers({name: fake.url}, poll_initial=0.05)[name]
    started = time.monotonic()
    with pytest.raises(errors.Timeout):
        await provider.generate(GenerateRequest("slow", MODELS[name]), TOKEN, soon(2.5))
    assert time.monotonic() - started < 2.5 + provider.cancel_timeout
    stats = fake.stats(TOKEN)
    assert len(stats["cancelled"]) == 1 and stats["in_flight"] == 0
    await provider.aclose()


@pytest.mark.parametrize("name", ["replicate", "fal"])
async def test_asyncio_cancellation_cancels_the_remote_job(fake, name):
    """What a lost race does: the worker cancels the losing call's task."""
    fake.control(latency=30)
    # prefer_wait=0: the create answers at once, the job is then polled.
    provider = (ReplicateProvider(fake.url, prefer_wait=0, poll_initial=0.05) if name == "replicate"
                else FalProvider(fake.url, poll_initial=0.05))
    task = asyncio.ensure_future(provider.generate(GenerateRequest("slow", MODELS[name]), TOKEN, soon(60)))
    await fake.wait_until(lambda s: s["total"]["in_flight"] == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = fake.stats(TOKEN)
    assert len(stats["cancelled"]) == 1 and stats["in_flight"] == 0
    await provider.aclose()


async def test_cancellation_during_replicate_prefer_wait_cancels_once_the_id_arrives(fake):
    fake.control(latency=30)
    provider = ReplicateProvider(fake.url, prefer_wait=1)
    task = asyncio.ensure_future(provider.generate(GenerateRequest("slow", MODELS["replicate"]),
                                                   TOKEN, soon(60)))
    await fake.wait_until(lambda s: s["total"]["in_flight"] == 1)
    task.cancel()  # the create request is still held by `Prefer: wait=1`
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = fake.stats(TOKEN)
    assert len(stats["cancelled"]) == 1 and stats["in_flight"] == 0
    await provider.aclose()


async def test_openai_cancellation_abandons_the_request(fake):
    fake.control(latency=30)
    provider = OpenAIProvider(fake.url)
    task = asyncio.ensure_future(provider.generate(GenerateRequest("slow", "dall-e-3"), TOKEN, soon(60)))
    await fake.wait_until(lambda s: s["total"]["in_flight"] == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake.wait_until(lambda s: s["total"]["in_flight"] == 0, timeout=5)
    await provider.aclose()


# --- error mapping ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
async def test_bad_token_is_auth_failed(providers, fake, name):
    with pytest.raises(errors.AuthFailed) as info:
        await providers[name].generate(GenerateRequest("x", MODELS[name]), "sk-wrong-token-0001", soon())
    assert "sk-wrong-token-0001" not in str(info.value)
    assert fake.stats("sk-wrong-token-0001")["calls"] == 1


@pytest.mark.parametrize("name", list(MODELS))
async def test_missing_token_is_auth_failed_without_a_call(providers, fake, name):
    with pytest.raises(errors.AuthFailed):
        await providers[name].generate(GenerateRequest("x", MODELS[name]), None, soon())
    assert fake.stats()["total"]["calls"] == 0


@pytest.mark.parametrize("name", list(MODELS))
async def test_422_is_invalid_input_naming_what_the_provider_said(providers, fake, name):
    fake.control(errors=[{"status": 422, "detail": "width must be a multiple of 8"}])
    with pytest.raises(errors.InvalidInput) as info:
        await providers[name].generate(GenerateRequest("x", MODELS[name]), TOKEN, soon())
    assert "width must be a multiple of 8" in info.value.message
    assert info.value.retryable is False


async def test_fake_validation_errors_are_invalid_input(providers):
    with pytest.raises(errors.InvalidInput) as info:
        await providers["fal"].generate(GenerateRequest("", MODELS["fal"]), TOKEN, soon())
    assert "prompt" in info.value.message
    with pytest.raises(errors.InvalidInput):
        await providers["replicate"].generate(GenerateRequest("x", "not-a-model/with/too/many"), TOKEN, soon())


@pytest.mark.parametrize("name", list(MODELS))
async def test_429_is_rate_limited_with_retry_after(providers, fake, name):
    fake.control(errors=[{"status": 429, "retry_after": "7"}])
    with pytest.raises(errors.RateLimited) as info:
        await providers[name].generate(GenerateRequest("x", MODELS[name]), TOKEN, soon())
    assert info.value.retry_after == 7 and info.value.retryable


def test_retry_after_as_http_date():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412470.0) == 10.0
    assert parse_retry_after("garbage") is None and parse_retry_after(None) is None


@pytest.mark.parametrize("name", list(MODELS))
async def test_5xx_is_a_retryable_provider_failure(providers, fake, name):
    fake.control(errors=[502])
    with pytest.raises(errors.ProviderFailed) as info:
        await providers[name].generate(GenerateRequest("x", MODELS[name]), TOKEN, soon())
    assert info.value.retryable


@pytest.mark.parametrize("name", ["replicate", "fal"])
async def test_failed_job_is_a_final_provider_failure(providers, fake, name):
    fake.control(fail_jobs=1)
    with pytest.raises(errors.ProviderFailed) as info:
        await providers[name].generate(GenerateRequest("x", MODELS[name]), TOKEN, soon())
    assert info.value.retryable is False
    assert "told to fail" in info.value.message


async def test_a_transient_poll_error_does_not_lose_the_job(fake):
    fake.control(poll_errors=[503])
    provider = FalProvider(fake.url, poll_initial=0.02)
    outputs = await provider.generate(GenerateRequest("x", MODELS["fal"]), TOKEN, soon())
    await provider.aclose()
    assert len(outputs) == 1 and fake.stats(TOKEN)["cancelled"] == []


async def test_repeated_poll_errors_fail_the_call_and_cancel_the_job(fake):
    fake.control(latency=30, poll_errors=[503, 503, 503])
    provider = FalProvider(fake.url, poll_initial=0.02, poll_error_budget=3)
    with pytest.raises(errors.ProviderFailed):
        await provider.generate(GenerateRequest("x", MODELS["fal"]), TOKEN, soon())
    await provider.aclose()
    assert len(fake.stats(TOKEN)["cancelled"]) == 1


async def test_metrics_count_requests_and_errors_by_code(providers, fake):
    errs = metrics.PROVIDER_ERRORS.labels("openai", "AUTH")
    before = errs._value.get()
    with pytest.raises(errors.AuthFailed):
        await providers["openai"].generate(GenerateRequest("x", "m"), "nope-token", soon())
    assert errs._value.get() == before + 1
    samples = {s.name: s.value for s in metrics.PROVIDER_REQUEST.collect()[0].samples
               if s.labels.get("provider") == "openai"}
    assert samples["imagemesh_provider_request_seconds_count"] >= 1


# --- secrets --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
async def test_the_token_never_appears_in_messages_or_logs(providers, fake, name, caplog):
    """The fake echoes a rejected token in its 401 and we inject its text into a 422 and a 500:
    no exception message, repr or log record may contain it."""
    caplog.set_level(logging.DEBUG)
    fake.control(valid_tokens=[TOKEN, "other-valid"])
    seen: list[BaseException] = []
    fake.control(errors=[{"status": 422, "detail": f"bad key {TOKEN} for this input"},
                         {"status": 500, "detail": f"crashed with {TOKEN}"},
                         {"status": 429, "detail": f"slow down {TOKEN}"}])
    for _ in range(3):
        with pytest.raises(errors.TaskFailure) as info:
            await providers[name].generate(GenerateRequest("x", MODELS[name]), TOKEN, soon())
        seen.append(info.value)
    fake.control(valid_tokens=["other-valid"])
    with pytest.raises(errors.AuthFailed) as info:
        await providers[name].generate(GenerateRequest("x", MODELS[name]), TOKEN, soon())
    seen.append(info.value)
    fake.control(latency=30, valid_tokens=[TOKEN])
    with pytest.raises(errors.Timeout) as info:
        await providers[name].generate(GenerateRequest("x", MODELS[name]), TOKEN, soon(1.5))
    seen.append(info.value)
    for exc in seen:
        for text in (str(exc), repr(exc), exc.message, str(exc.__cause__), str(exc.__context__)):
            assert TOKEN not in text
    assert [type(e).__name__ for e in seen] == [
        "InvalidInput", "ProviderFailed", "RateLimited", "AuthFailed", "Timeout"]
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert TOKEN not in (record.exc_text or "")
