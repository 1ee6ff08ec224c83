"""A fake of the three hosted image APIs, fast enough for benchmarks, honest enough for tests.

Speaks (request and response shapes as the real APIs document them):
- Replicate: `POST /v1/models/{owner}/{name}/predictions`, `POST /v1/predictions` (version),
  `Prefer: wait=N`, `GET /v1/predictions/{id}`, `POST /v1/predictions/{id}/cancel`; auth
  `Bearer <token>` (or `Token <token>`).
- fal queue: `POST /{model}` → request_id/status_url/response_url/cancel_url,
  `GET /{app}/requests/{id}/status`, `GET /{app}/requests/{id}`, `PUT /{app}/requests/{id}/cancel`;
  auth `Key <token>`.
- OpenAI: `POST /v1/images/generations` (`response_format` url | b64_json); auth `Bearer`.
- `GET /files/{w}x{h}/{name}.png[?exp=unix_ms]`: the output images (real PNGs made by Pillow,
  cached per size); 410 after `exp`. `GET /redirect?to=URL`: a 302, for the URL guard.

Knobs, set with `POST /_control` (JSON) or `FakeProviders.control(...)`; with `"token": T` they
apply to that token only, otherwise to all:
  latency      seconds a job runs: a number or [min, max] (uniform)      default 0.05
  errors       list of HTTP statuses (or {"status", "retry_after", "detail"}) answered by the
               next job-creating calls, one each
  poll_errors  the same for the next poll calls (status/result GETs)
  fail_jobs    the next N jobs end as failed
  url_ttl      output URLs stop working after this many seconds (null: never)
  image_size   [w, h] of output images when the inputs do not say              default [64, 64]
  output_bytes output images are this many bytes (a real PNG padded with zeros after its end,
               streamed from `GET /blob/{n}/{w}x{h}/{name}`): large outputs without large memory
  valid_tokens list of accepted tokens (global only; null: any non-empty token). Others get 401,
               with the token echoed in the message as some real APIs do (adapters must scrub it).
  reset        true: forget knobs, stats and jobs.
Per request: inputs `_fake_latency` (seconds) and `_fake_fail` (true) override the knobs.

Stats (`GET /_stats`, `FakeProviders.stats()`), per token and in total: calls (every API call),
jobs (created), in_flight (a job counts from creation until it finishes or is cancelled; an
OpenAI request while its handler runs), max_in_flight, completed, cancelled (job ids).

Run as a process: `python -m tests.fakes.provider_server --port 0` prints `LISTENING <port>`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import io
import itertools
import random
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

DEFAULT_LATENCY = 0.05


@functools.lru_cache(maxsize=64)
def png(width: int, height: int) -> bytes:
    from PIL import Image
    image = Image.new("RGB", (width, height), ((width * 7) % 256, (height * 13) % 256, 128))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@functools.lru_cache(maxsize=64)
def png_b64(width: int, height: int) -> str:
    return base64.b64encode(png(width, height)).decode()


@dataclass
class Knobs:
    latency: float | list[float] = DEFAULT_LATENCY
    errors: deque = field(default_factory=deque)
    poll_errors: deque = field(default_factory=deque)
    fail_jobs: int = 0
    url_ttl: float | None = None
    image_size: tuple[int, int] = (64, 64)
    output_bytes: int | None = None

    def apply(self, spec: dict[str, Any]) -> None:
        if "latency" in spec:
            self.latency = spec["latency"]
        if "errors" in spec:
            self.errors = deque(spec["errors"] or [])
        if "poll_errors" in spec:
            self.poll_errors = deque(spec["poll_errors"] or [])
        if "fail_jobs" in spec:
            self.fail_jobs = int(spec["fail_jobs"])
        if "url_ttl" in spec:
            self.url_ttl = spec["url_ttl"]
        if "image_size" in spec:
            self.image_size = tuple(spec["image_size"])
        if "output_bytes" in spec:
            self.output_bytes = spec["output_bytes"]

    def draw_latency(self) -> float:
        if isinstance(self.latency, (list, tuple)):
            return random.uniform(self.latency[0], self.latency[1])
        return float(self.latency)


@dataclass
class TokenStats:
    calls: int = 0
    jobs: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    completed: int = 0
    cancelled: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "jobs": self.jobs, "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight, "completed": self.completed,
                "cancelled": list(self.cancelled)}


@dataclass
class Job:
    id: str
    api: str
    token: str
    model: str
    inputs: dict[str, Any]
    origin: str
    status: str = "starting"          # replicate vocabulary; fal maps it
    error: str | None = None
    output: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None
    created: float = field(default_factory=time.time)


class FakeState:
    def __init__(self) -> None:
        self.reset()
        self._changed = asyncio.Event()

    def reset(self) -> None:
        self.valid_tokens: set[str] | None = None
        self.knobs = Knobs()
        self.token_knobs: dict[str, Knobs] = {}
        self.stats: dict[str, TokenStats] = {}
        self.total = TokenStats()
        self.jobs: dict[str, Job] = {}
        self.ids = itertools.count(1)

    # --- control ------------------------------------------------------------------------------
    def control(self, spec: dict[str, Any]) -> None:
        if spec.get("reset"):
            for job in self.jobs.values():
                if job.timer:
                    job.timer.cancel()
            self.reset()
        if "valid_tokens" in spec:
            tokens = spec["valid_tokens"]
            self.valid_tokens = None if tokens is None else set(tokens)
        token = spec.get("token")
        if token is not None:
            knobs = self.token_knobs.get(token)
            if knobs is None:
                knobs = self.token_knobs[token] = Knobs(
                    latency=self.knobs.latency, url_ttl=self.knobs.url_ttl,
                    image_size=self.knobs.image_size)
            knobs.apply(spec)
        else:
            self.knobs.apply(spec)

    def injected_error(self, token: str, *, poll: bool = False) -> web.Response | None:
        """The next injected error for this call: the token's own queue first, then the global."""
        for knobs in (self.token_knobs.get(token), self.knobs):
            if knobs is not None:
                response = _injected(knobs.poll_errors if poll else knobs.errors)
                if response is not None:
                    return response
        return None

    def knobs_for(self, token: str) -> Knobs:
        return self.token_knobs.get(token, self.knobs)

    def snapshot(self) -> dict[str, Any]:
        return {"tokens": {t: s.as_dict() for t, s in self.stats.items()},
                "total": self.total.as_dict()}

    # --- events for in-process waiters ---------------------------------------------------------
    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[dict[str, Any]], bool],
                         timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                event = self._changed
                snap = self.snapshot()
                if predicate(snap):
                    return snap
                await event.wait()

    # --- accounting -----------------------------------------------------------------------------
    def stats_for(self, token: str) -> TokenStats:
        stats = self.stats.get(token)
        if stats is None:
            stats = self.stats[token] = TokenStats()
        return stats

    def call(self, token: str) -> None:
        self.stats_for(token).calls += 1
        self.total.calls += 1
        self._notify()

    def start(self, token: str) -> None:
        for stats in (self.stats_for(token), self.total):
            stats.jobs += 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        self._notify()

    def stop(self, token: str, job_id: str, cancelled: bool) -> None:
        for stats in (self.stats_for(token), self.total):
            stats.in_flight -= 1
            if cancelled:
                stats.cancelled.append(job_id)
            else:
                stats.completed += 1
        self._notify()

    # --- jobs -------------------------------------------------------------------------------------
    def new_job(self, api: str, token: str, model: str, inputs: dict[str, Any],
                origin: str) -> Job:
        job = Job(id=f"{api[0]}{next(self.ids):08d}", api=api, token=token, model=model,
                  inputs=inputs, origin=origin)
        self.jobs[job.id] = job
        knobs = self.knobs_for(token)
        fail = bool(inputs.get("_fake_fail"))
        if knobs.fail_jobs > 0:
            knobs.fail_jobs -= 1
            fail = True
        latency = inputs.get("_fake_latency")
        latency = knobs.draw_latency() if latency is None else float(latency)
        self.start(token)
        job.status = "processing"
        job.timer = asyncio.get_running_loop().call_later(latency, self.finish, job, fail)
        return job

    def output_urls(self, job: Job, count: int) -> list[dict[str, Any]]:
        knobs = self.knobs_for(job.token)
        width = int(job.inputs.get("width") or knobs.image_size[0])
        height = int(job.inputs.get("height") or knobs.image_size[1])
        width, height = min(max(width, 1), 2048), min(max(height, 1), 2048)
        query = ""
        if knobs.url_ttl is not None:
            query = f"?exp={int((time.time() + knobs.url_ttl) * 1000)}"
        path = f"/blob/{knobs.output_bytes}/" if knobs.output_bytes else "/files/"
        return [{"url": f"{job.origin}{path}{width}x{height}/{job.id}_{i}.png{query}",
                 "width": width, "height": height, "content_type": "image/png"}
                for i in range(max(1, count))]

    def finish(self, job: Job, fail: bool) -> None:
        if job.done.is_set():
            return
        if fail:
            job.status, job.error = "failed", "the fake was told to fail this job"
        else:
            count = int(job.inputs.get("num_outputs") or job.inputs.get("num_images") or 1)
            job.images = self.output_urls(job, count)
            job.output = [image["url"] for image in job.images]
            job.status = "succeeded"
        job.done.set()
        self.stop(job.token, job.id, cancelled=False)

    def cancel(self, job: Job) -> bool:
        if job.done.is_set():
            return False
        if job.timer:
            job.timer.cancel()
        job.status = "canceled"
        job.done.set()
        self.stop(job.token, job.id, cancelled=True)
        return True


# --- HTTP -----------------------------------------------------------------------------------------
STATE = web.AppKey("state", FakeState)


def _token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme in ("Bearer", "Token", "Key") and value.strip():
        return value.strip()
    return None


def _error(status: int, detail: str, **headers: str) -> web.Response:
    return web.json_response({"detail": detail, "status": status, "title": detail}, status=status,
                             headers=headers)


def _injected(queue: deque) -> web.Response | None:
    if not queue:
        return None
    spec = queue.popleft()
    if isinstance(spec, int):
        spec = {"status": spec}
    headers = {}
    if spec.get("retry_after") is not None:
        headers["Retry-After"] = str(spec["retry_after"])
    return _error(int(spec["status"]), spec.get("detail") or f"injected error {spec['status']}",
                  **headers)


def _authorise(request: web.Request) -> tuple[str | None, web.Response | None]:
    state = request.app[STATE]
    token = _token(request)
    state.call(token or "")
    if token is None:
        return None, _error(401, "You did not pass an authentication token")
    if state.valid_tokens is not None and token not in state.valid_tokens:
        # Echoed on purpose: real APIs do it, adapters must scrub it.
        return None, _error(401, f"Incorrect API key provided: {token}")
    return token, None


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "body is not JSON")
    if not isinstance(body, dict):
        return _error(400, "body is not a JSON object")
    return body


# Replicate ------------------------------------------------------------------------------------------
def _prediction(job: Job) -> dict[str, Any]:
    base = f"{job.origin}/v1/predictions/{job.id}"
    return {"id": job.id, "model": job.model, "version": job.inputs.get("_version", ""),
            "input": {k: v for k, v in job.inputs.items() if not k.startswith("_")},
            "status": job.status, "error": job.error,
            "output": (job.output if len(job.output) != 1 else job.output[0]) if job.output else None,
            "urls": {"get": base, "cancel": base + "/cancel"}, "created_at": job.created}


async def replicate_create(request: web.Request) -> web.Response:
    state = request.app[STATE]
    token, denied = _authorise(request)
    if denied:
        return denied
    injected = state.injected_error(token)
    if injected:
        return injected
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    inputs = body.get("input")
    if not isinstance(inputs, dict):
        return _error(422, "input is required")
    if "owner" in request.match_info:
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
    else:
        if not body.get("version"):
            return _error(422, "version is required")
        model = ""
        inputs = dict(inputs, _version=body["version"])
    if not isinstance(inputs.get("prompt"), str) or not inputs["prompt"]:
        return _error(422, "input.prompt is required")
    job = state.new_job("replicate", token, model, inputs, _origin(request))
    prefer = request.headers.get("Prefer", "")
    if prefer.startswith("wait"):
        _, _, seconds = prefer.partition("=")
        wait = min(60.0, float(seconds) if seconds else 60.0)
        try:
            await asyncio.wait_for(job.done.wait(), wait)
        except TimeoutError:
            pass
    return web.json_response(_prediction(job), status=201)


def _job(request: web.Request, token: str, api: str) -> Job | web.Response:
    job = request.app[STATE].jobs.get(request.match_info["id"])
    if job is None or job.token != token or job.api != api:
        return _error(404, "Not found")
    return job


async def replicate_get(request: web.Request) -> web.Response:
    state = request.app[STATE]
    token, denied = _authorise(request)
    if denied:
        return denied
    injected = state.injected_error(token, poll=True)
    if injected:
        return injected
    job = _job(request, token, "replicate")
    return job if isinstance(job, web.Response) else web.json_response(_prediction(job))


async def replicate_cancel(request: web.Request) -> web.Response:
    state = request.app[STATE]
    token, denied = _authorise(request)
    if denied:
        return denied
    job = _job(request, token, "replicate")
    if isinstance(job, web.Response):
        return job
    state.cancel(job)
    return web.json_response(_prediction(job))


# fal --------------------------------------------------------------------------------------------------
def _fal_urls(job: Job) -> dict[str, str]:
    app = "/".join(job.model.split("/")[:2])
    base = f"{job.origin}/{app}/requests/{job.id}"
    return {"status_url": base + "/status", "response_url": base, "cancel_url": base + "/cancel"}


async def fal_submit(request: web.Request) -> web.Response:
    state = request.app[STATE]
    token, denied = _authorise(request)
    if denied:
        return denied
    injected = state.injected_error(token)
    if injected:
        return injected
    model = request.match_info["model"].strip("/")
    if len(model.split("/")) < 2:
        return _error(404, f"Application {model!r} not found")
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return web.json_response({"detail": [{"loc": ["body", "prompt"], "msg": "field required",
                                              "type": "value_error.missing"}]}, status=422)
    job = state.new_job("fal", token, model, body, _origin(request))
    return web.json_response({"request_id": job.id, **_fal_urls(job)})


async def fal_status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    token, denied = _authorise(request)
    if denied:
        return denied
    injected = state.injected_error(token, poll=True)
    if injected:
        return injected
    job = _job(request, token, "fal")
    if isinstance(job, web.Response):
        return job
    body: dict[str, Any] = {"request_id": job.id, **_fal_urls(job)}
    if not job.done.is_set():
        body["status"] = "IN_PROGRESS"
    else:
        body["status"] = "COMPLETED"
        if job.status == "failed":
            body["error"] = job.error
        elif job.status == "canceled":
            body["error"] = "request was cancelled"
    return web.json_response(body, status=202 if not job.done.is_set() else 200)


async def fal_result(request: web.Request) -> web.Response:
    state = request.app[STATE]
    token, denied = _authorise(request)
    if denied:
        return denied
    injected = state.injected_error(token, poll=True)
    if injected:
        return injected
    job = _job(request, token, "fal")
    if isinstance(job, web.Response):
        return job
    if not job.done.is_set():
        return _error(400, "Request is still in progress")
    if job.status != "succeeded":
        return _error(422, job.error or "request was cancelled")
    return web.json_response({"images": job.images, "seed": 42, "prompt": job.inputs.get("prompt")})


async def fal_cancel(request: web.Request) -> web.Response:
    state = request.app[STATE]
    token, denied = _authorise(request)
    if denied:
        return denied
    job = _job(request, token, "fal")
    if isinstance(job, web.Response):
        return job
    if state.cancel(job):
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)
    return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)


# OpenAI ---------------------------------------------------------------------------------------------
async def openai_generate(request: web.Request) -> web.Response:
    state = request.app[STATE]
    token, denied = _authorise(request)
    if denied:
        return denied
    injected = state.injected_error(token)
    if injected:
        return injected
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return web.json_response({"error": {"message": "prompt is required", "type":
                                            "invalid_request_error", "param": "prompt"}}, status=400)
    inputs = dict(body)
    size = str(body.get("size") or "")
    if "x" in size:
        w, _, h = size.partition("x")
        inputs["width"], inputs["height"] = int(w), int(h)
    inputs["num_outputs"] = int(body.get("n") or 1)
    knobs = state.knobs_for(token)
    job = Job(id=f"o{next(state.ids):08d}", api="openai", token=token,
              model=str(body.get("model") or ""), inputs=inputs, origin=_origin(request))
    latency = inputs.get("_fake_latency")
    latency = knobs.draw_latency() if latency is None else float(latency)
    state.start(token)
    finished = False
    try:
        await asyncio.sleep(latency)
        finished = True
    finally:
        # A client that hung up cancels this handler (handler_cancellation=True).
        state.stop(token, job.id, cancelled=not finished)
    if inputs.get("_fake_fail") or knobs.fail_jobs > 0:
        knobs.fail_jobs = max(0, knobs.fail_jobs - 1)
        return web.json_response({"error": {"message": "Your request was rejected by the safety "
                                             "system.", "type": "invalid_request_error"}}, status=400)
    images = state.output_urls(job, inputs["num_outputs"])
    if body.get("response_format") == "b64_json":
        data = [{"b64_json": png_b64(img["width"], img["height"])} for img in images]
    else:
        data = [{"url": img["url"]} for img in images]
    return web.json_response({"created": int(time.time()), "data": data})


# files, control ---------------------------------------------------------------------------------------
async def serve_file(request: web.Request) -> web.Response:
    exp = request.query.get("exp")
    if exp and exp.isdigit() and int(exp) < time.time() * 1000:
        return web.Response(status=410, text="This URL has expired")
    width, height = int(request.match_info["w"]), int(request.match_info["h"])
    if not (0 < width <= 2048 and 0 < height <= 2048):
        return web.Response(status=404)
    return web.Response(body=png(width, height), content_type="image/png")


async def serve_blob(request: web.Request) -> web.StreamResponse:
    """A PNG padded to `n` bytes, written in chunks (the fake never holds it whole)."""
    size = int(request.match_info["n"])
    head = png(min(int(request.match_info["w"]), 2048), min(int(request.match_info["h"]), 2048))
    response = web.StreamResponse(headers={"Content-Type": "image/png"})
    response.content_length = max(size, len(head))
    await response.prepare(request)
    await response.write(head)
    left, zeros = size - len(head), bytes(256 * 1024)
    while left > 0:
        await response.write(zeros[:left])
        left -= len(zeros)
    await response.write_eof()
    return response


async def redirect(request: web.Request) -> web.Response:
    """`GET /redirect?to=URL`: a 302 to anywhere, for the URL guard's tests."""
    raise web.HTTPFound(request.query.get("to", str(request.rel_url)))  # no `to`: a loop


async def control(request: web.Request) -> web.Response:
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    request.app[STATE].control(body)
    return web.json_response({"ok": True})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].snapshot())


def make_app(state: FakeState | None = None) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[STATE] = state or FakeState()
    # Order matters: the fal catch-all routes come last.
    app.router.add_post("/_control", control)
    app.router.add_get("/_stats", stats)
    app.router.add_get(r"/files/{w:\d+}x{h:\d+}/{name}", serve_file)
    app.router.add_get(r"/blob/{n:\d+}/{w:\d+}x{h:\d+}/{name}", serve_blob)
    app.router.add_get("/redirect", redirect)
    app.router.add_post("/v1/models/{owner}/{name}/predictions", replicate_create)
    app.router.add_post("/v1/predictions", replicate_create)
    app.router.add_get("/v1/predictions/{id}", replicate_get)
    app.router.add_post("/v1/predictions/{id}/cancel", replicate_cancel)
    app.router.add_post("/v1/images/generations", openai_generate)
    app.router.add_get("/{app:.+}/requests/{id}/status", fal_status)
    app.router.add_put("/{app:.+}/requests/{id}/cancel", fal_cancel)
    app.router.add_get("/{app:.+}/requests/{id}", fal_result)
    app.router.add_post("/{model:.+}", fal_submit)
    return app


async def start(host: str = "127.0.0.1", port: int = 0,
                state: FakeState | None = None) -> tuple[web.AppRunner, int, FakeState]:
    state = state or FakeState()
    runner = web.AppRunner(make_app(state), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, bound, state


class FakeProviders:
    """In-process fake: `async with FakeProviders(valid_tokens=[...]) as fake: fake.url`."""

    def __init__(self, **knobs: Any) -> None:
        self._initial = knobs
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.state: FakeState | None = None

    async def __aenter__(self) -> "FakeProviders":
        self.runner, self.port, self.state = await start()
        if self._initial:
            self.state.control(self._initial)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def control(self, **spec: Any) -> None:
        assert self.state is not None
        self.state.control(spec)

    def stats(self, token: str | None = None) -> dict[str, Any]:
        assert self.state is not None
        snap = self.state.snapshot()
        if token is None:
            return snap
        return snap["tokens"].get(token, TokenStats().as_dict())

    async def wait_until(self, predicate: Callable[[dict[str, Any]], bool],
                         timeout: float = 10.0) -> dict[str, Any]:
        """Wait (event-driven) until `predicate(stats())` holds."""
        assert self.state is not None
        return await self.state.wait_until(predicate, timeout)


class FakeProviderProcess:
    """The fake as a child process (for multi-process tests and benchmarks):
    `with FakeProviderProcess() as fake: fake.url`."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> "FakeProviderProcess":
        root = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.provider_server", "--port", "0", *self.args],
            cwd=root, env=self.env, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("LISTENING "):
            self.proc.kill()
            raise RuntimeError(f"fake provider server did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _serve(host: str, port: int, spec: dict[str, Any]) -> None:
    runner, bound, state = await start(host, port)
    if spec:
        state.control(spec)
    print(f"LISTENING {bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=DEFAULT_LATENCY,
                        help="seconds each job runs")
    parser.add_argument("--latency-max", type=float, default=None,
                        help="if set, latency is uniform in [--latency, --latency-max]")
    parser.add_argument("--valid-tokens", default=None, help="comma-separated accepted tokens")
    args = parser.parse_args(argv)
    spec: dict[str, Any] = {"latency": args.latency if args.latency_max is None
                            else [args.latency, args.latency_max]}
    if args.valid_tokens is not None:
        spec["valid_tokens"] = [t for t in args.valid_tokens.split(",") if t]
    try:
        asyncio.run(_serve(args.host, args.port, spec))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
