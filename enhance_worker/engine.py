"""The enhance engine: one `Assignment` in, one `AttemptResult` out, models resident.

    engine = await EnhanceEngine.create(settings)   # loads the models (seconds): readiness after this
    result = await engine.run(assignment)            # any number at once; the worker caps them
    await engine.close()

Per image: fetch (bytes, `image_url`, a stored input — an upload or the generated outputs of a
`then_enhance` stage — through `imagemesh.uploads`) → probe the header and check the size
limits → wait for admission by cost (megapixels × upscale², `CostBudget`) → decode → infer →
encode (png/jpg/webp) → write to the assignment's upload target (or inline when it has none),
so a ×4 result of tens of megabytes never rides the worker's stream. Decoding and encoding run
in the default thread pool; inference runs on ONE dedicated thread (the models keep per-image
state, and one image at a time already fills a GPU or the CPU cores), so the event loop — and
the worker's heartbeats — never wait for the model.

Failures are results, not exceptions: a corrupt or oversized image, a refused URL → FAILED with
INVALID_INPUT naming the problem; out of memory after `oom_retries` smaller tiles → FAILED,
UNAVAILABLE (retryable elsewhere); a bug → FAILED, INTERNAL (logged). The engine keeps serving
after each of them. Cancellation (asyncio.CancelledError) propagates: the inference thread
stops at its next forward pass (tile or face), and the image's admission is held until then,
so a cancelled image cannot let more work in than the budget allows.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from imagemesh import metrics
from imagemesh.errors import Internal, InvalidInput, TaskFailure, Unavailable
from imagemesh import filenames
from imagemesh.uploads import Body, ObjectLink
from imagemesh.urlguard import fetch_bytes
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import worker_pb2 as wpb

from . import codec, weights
from .admission import CostBudget, image_cost
from .job import Enhanced, EnhanceOptions
from .lanczos import MODEL_NAME as FALLBACK_MODEL, LanczosModels
from .settings import EnhanceSettings

log = logging.getLogger("imagemesh.enhance")

UPSCALES = (1, 2, 4)
MIN_TILE = 32


def options_of(spec: pb.EnhanceSpec) -> tuple[EnhanceOptions, str]:
    """(options, output format) from a spec; raises InvalidInput naming the bad field."""
    upscale = spec.upscale or 2
    if upscale not in UPSCALES:
        raise InvalidInput(f"enhance.upscale: {spec.upscale}, must be 1, 2 or 4")
    if not 0.0 <= spec.fidelity <= 1.0:
        raise InvalidInput(f"enhance.fidelity: {spec.fidelity}, must be 0..1")
    fmt = (spec.output_format or "png").lower()
    if fmt == "jpeg":
        fmt = "jpg"
    if fmt not in ("png", "jpg", "webp"):
        raise InvalidInput(f"enhance.output_format: {spec.output_format!r}, must be png, jpg or webp")
    return EnhanceOptions(upscale=upscale, restore_faces=spec.restore_faces, fidelity=float(spec.fidelity),
                          only_center_face=spec.only_center_face), fmt


def _half(value: str) -> bool | None:
    v = value.strip().lower()
    if v in ("auto", ""):
        return None
    if v in ("on", "true", "1", "yes"):
        return True
    if v in ("off", "false", "0", "no"):
        return False
    raise ValueError(f"half: {value!r}, must be auto, on or off")


def load_models(s: EnhanceSettings):
    """The models the settings ask for (runs on the inference thread). Raises weights.MissingWeights."""
    if s.fallback:
        log.warning("running the labelled %s (OpenCV Lanczos resize, no face restoration): --fallback",
                    FALLBACK_MODEL)
        return LanczosModels()
    try:
        weights.check(s.weights_dir)
    except weights.MissingWeights as exc:
        if not s.fallback_if_no_weights:
            raise
        log.warning("%s — running the labelled %s instead (--fallback-if-no-weights)", exc, FALLBACK_MODEL)
        return LanczosModels()
    import torch

    from .models import EnhanceModels  # imports torch, basicsr, gfpgan: seconds

    if s.torch_threads > 0:
        torch.set_num_threads(s.torch_threads)
    return EnhanceModels.load(s.weights_dir, device=s.device or None, half=_half(s.half), max_faces=s.max_faces)


class EnhanceEngine:
    """Runs enhance assignments on models loaded once. Build with `create`."""

    def __init__(self, models, settings: EnhanceSettings, executor: ThreadPoolExecutor,
                 http: httpx.AsyncClient, objects: ObjectLink | None = None) -> None:
        self.models = models
        self.settings = settings
        self.device: str = models.device_name
        self.fallback = isinstance(models, LanczosModels)
        self.budget = CostBudget(settings.cost_budget)
        self._executor = executor
        self._http = http
        # Where outputs are written and stored inputs read; its `channel` is set by the worker.
        self.objects = objects or ObjectLink(http=http, api_key=settings.api_key,
                                             max_message_bytes=settings.max_message_bytes)
        self._tile_cost = settings.tile_cost or (4.0 if self.device.startswith("cuda") else 2.0)
        metrics.ENHANCE_COST_BUDGET.labels(self.device).set(settings.cost_budget)
        self._oom_errors: tuple[type[BaseException], ...] = ()
        if not self.fallback:
            import torch

            from .models import DeviceOutOfMemory

            # DeviceOutOfMemory comes from the guarded forward passes; a raw torch OOM can still
            # come from code outside them (the face detector, tensor copies).
            self._oom_errors = (DeviceOutOfMemory, torch.cuda.OutOfMemoryError)

    @classmethod
    async def create(cls, settings: EnhanceSettings) -> "EnhanceEngine":
        """Load the models on the inference thread (the event loop stays free meanwhile).

        Raises weights.MissingWeights (naming the file and `make weights`) unless a fallback is
        allowed by the settings.
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enhance-inference")
        try:
            models = await asyncio.get_running_loop().run_in_executor(executor, load_models, settings)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        http = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=0), timeout=30.0)
        return cls(models, settings, executor, http)

    @property
    def model_name(self) -> str:
        return FALLBACK_MODEL if self.fallback else "GFPGANv1.4+RealESRGAN"

    async def close(self) -> None:
        await self._http.aclose()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- one assignment ------------------------------------------------------------------------
    async def run(self, a: wpb.Assignment) -> wpb.AttemptResult:
        """Enhance the assignment's image(s); FAILED results carry the reason (see the module doc)."""
        started = time.monotonic()
        result = wpb.AttemptResult(attempt_id=a.attempt_id, task_id=a.task_id, attempt=a.attempt,
                                   fence=a.fence, provider=a.provider, tries=1, device=self.device,
                                   model=FALLBACK_MODEL if self.fallback else "")
        try:
            options, fmt = options_of(a.enhance)
            sources = self._sources(a)
            content_type = codec.content_type(fmt)
            names = self._filenames(a, len(sources), content_type)
            for i, ((label, source), name) in enumerate(zip(sources, names)):
                data = await source()
                enhanced, encoded = await self._one(data, options, fmt, f"{a.attempt_id} {label}")
                del data
                h, w = enhanced.image.shape[:2]
                out_file = await self.objects.output(a, i, Body.of(encoded), content_type, name)
                out_file.width, out_file.height = w, h
                result.files.append(out_file)
                result.model = enhanced.model
            result.state = pb.SUCCEEDED
        except TaskFailure as exc:
            self._fail(result, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("enhance attempt %s failed with a bug", a.attempt_id)
            self._fail(result, Internal(f"enhance worker error: {type(exc).__name__}"))
        result.run_ms = int((time.monotonic() - started) * 1000)
        return result

    @staticmethod
    def _fail(result: wpb.AttemptResult, failure: TaskFailure) -> None:
        del result.files[:]
        result.state = pb.FAILED
        result.error.CopyFrom(pb.TaskError(code=failure.code, message=failure.message, retryable=failure.retryable))
        result.fallback_ok = failure.fallback_ok

    def _sources(self, a: wpb.Assignment):
        """[(label, async () -> bytes)]: the spec's own image, or each generated output (then_enhance)."""
        if len(a.inputs):
            return [(f"input {i + 1}", self._stored(a, i) if i < len(a.sources) and a.sources[i].object else
                     self._reader(f.data if f.WhichOneof("location") == "data" else None,
                                  f.url if f.WhichOneof("location") == "url" else None))
                    for i, f in enumerate(a.inputs)]
        spec = a.enhance
        kind = spec.WhichOneof("source")
        if kind == "image_object":
            if not len(a.sources):
                raise InvalidInput("enhance.image_object: the gateway gave no way to read it (storage is off?)")
            return [("image", self._stored(a, 0))]
        if kind is None:
            raise InvalidInput("enhance: set image, image_url or image_object")
        return [("image", self._reader(spec.image if kind == "image" else None,
                                       spec.image_url if kind == "image_url" else None))]

    def _stored(self, a: wpb.Assignment, index: int):
        async def read() -> bytes:
            return await self.objects.input(a, index, self.settings.max_input_bytes)
        return read

    def _reader(self, data: bytes | None, url: str | None):
        async def read() -> bytes:
            if data is not None:
                if len(data) > self.settings.max_input_bytes:
                    raise InvalidInput(f"the image is {len(data)} bytes, over the limit of "
                                       f"{self.settings.max_input_bytes}")
                return data
            if not url:
                raise InvalidInput("enhance input has neither data nor a URL")
            body, _ctype = await fetch_bytes(self._http, url, max_bytes=self.settings.max_input_bytes,
                                             allow_private=self.settings.allow_private_urls,
                                             timeout=self.settings.fetch_timeout)
            return body
        return read

    @staticmethod
    def _filenames(a: wpb.Assignment, count: int, content_type: str) -> list[str]:
        """The caller's name (the gateway sanitised it) with the output format's extension (the
        gateway plans its storage keys with the same rule)."""
        return filenames.enhanced([f.filename for f in a.inputs], a.output_filename, content_type)

    async def _one(self, data: bytes, options: EnhanceOptions, fmt: str, what: str) -> tuple[Enhanced, bytes]:
        s = self.settings
        probe = codec.probe(data)
        codec.check_size(probe, max_megapixels=s.max_input_megapixels, max_side=s.max_side)
        cost = image_cost(probe.width, probe.height, options.upscale)
        await self._admit(cost)
        release = True
        try:
            image = await asyncio.to_thread(codec.decode, data)
            stop = threading.Event()
            job = self._executor.submit(self._infer, image, options, stop)
            try:
                enhanced = await asyncio.wrap_future(job)
            except asyncio.CancelledError:
                stop.set()
                if not job.cancel():
                    # Running: the thread holds the image until its next forward pass.
                    release = False
                    loop = asyncio.get_running_loop()
                    job.add_done_callback(lambda _job: loop.call_soon_threadsafe(self._release, cost))
                raise
            metrics.ENHANCE_MEGAPIXELS.labels(self.device).inc(probe.megapixels)
            encoded = await asyncio.to_thread(codec.encode, enhanced.image, fmt, jpeg_quality=s.jpeg_quality)
        finally:
            if release:
                self._release(cost)
        h, w = enhanced.image.shape[:2]
        log.info("%s: %dx%d -> %dx%d, %d faces, %s", what, probe.width, probe.height, w, h,
                 enhanced.faces, enhanced.model)
        return enhanced, encoded

    async def _admit(self, cost: float) -> None:
        metrics.ENHANCE_WAITING.labels(self.device).set(self.budget.waiting + 1)
        try:
            await self.budget.acquire(cost)
        finally:
            metrics.ENHANCE_WAITING.labels(self.device).set(self.budget.waiting)
        metrics.ENHANCE_COST_IN_USE.labels(self.device).set(self.budget.in_use)

    def _release(self, cost: float) -> None:
        self.budget.release(cost)
        metrics.ENHANCE_COST_IN_USE.labels(self.device).set(self.budget.in_use)

    # -- on the inference thread ---------------------------------------------------------------
    def tile_for(self, height: int, width: int, upscale: int) -> int:
        """0 (one pass) when the output is within `tile_cost` megapixels, else a tile side that is."""
        if height * width * upscale * upscale / 1e6 <= self._tile_cost:
            return 0
        side = int(math.sqrt(self._tile_cost * 1e6) / upscale) // 8 * 8
        return max(MIN_TILE, side)

    def _infer(self, image, options: EnhanceOptions, stop: threading.Event) -> Enhanced:
        models = self.models
        h, w = image.shape[:2]
        tile = self.tile_for(h, w, options.upscale)
        retries = 0
        while True:
            started = time.perf_counter()
            try:
                enhanced = models.enhance(image, options, tile=tile, should_stop=stop.is_set)
            except Exception as exc:
                if not isinstance(exc, self._oom_errors):
                    raise
                models.empty_cache()
                smaller = max(MIN_TILE, (tile or max(h, w)) // 2 // 8 * 8)
                if retries >= self.settings.oom_retries or smaller == tile:
                    raise Unavailable(f"the device ran out of memory on a {w}x{h} image even with "
                                      f"{tile or 'no'}-pixel tiles") from None
                metrics.ENHANCE_OOM_RETRIES.labels(self.device).inc()
                log.warning("out of memory on a %dx%d image (tile %s): retrying with tile %d", w, h, tile or "off", smaller)
                retries += 1
                tile = smaller
                continue
            metrics.ENHANCE_INFERENCE.labels(self.device).observe(time.perf_counter() - started)
            metrics.ENHANCE_GPU_MEMORY.labels(self.device).set(models.memory_allocated())
            return enhanced


