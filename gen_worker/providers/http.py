"""What every HTTP adapter shares: one client, error mapping, the deadline, polling, remote cancel.

Outcome mapping (status → `imagemesh.errors`):

    400, 404, 409, 413, 422 and other 4xx  InvalidInput  (the provider's own words, token scrubbed)
    401, 403                               AuthFailed    (no provider text at all)
    402                                    AuthFailed    (account out of credit: another provider
                                                          with another account may work)
    408                                    Timeout
    429                                    RateLimited   (retry_after from Retry-After)
    5xx                                    ProviderFailed(retryable)
    connect error, reset, protocol error   Unavailable
    deadline                               Timeout       (remote job cancelled best-effort)

Messages are built here, never taken from httpx exceptions (whose text can carry URLs), and a
provider's own error text has the token replaced before it is used, in case the provider echoes
it back ("Incorrect API key provided: ...").

Subclasses implement `_generate`; `generate` wraps it with the deadline, metrics and the
conversion of unexpected exceptions into `Internal`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import functools
import io
import itertools
import logging
import mimetypes
import ssl
import time
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import httpx

from gen_worker.providers.base import GenerateRequest, Output
from imagemesh import metrics, tracing
from imagemesh.errors import (AuthFailed, Internal, InvalidInput, ProviderFailed, RateLimited,
                              TaskFailure, Timeout, Unavailable)

log = logging.getLogger(__name__)

MAX_DETAIL = 300


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Building one costs ~20 ms (it loads the CA bundle): share it between clients.
    return httpx.create_ssl_context()


def new_client(*, max_connections: int = 200) -> httpx.AsyncClient:
    """An AsyncClient with httpx's own retries off (our retry loop owns retrying)."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    transport = httpx.AsyncHTTPTransport(retries=0, limits=limits, verify=_tls_context())
    return httpx.AsyncClient(transport=transport,
                             timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=False)


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date. None when absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now())


def scrub(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "[token]")
    return text


def provider_detail(response: httpx.Response, token: str | None) -> str:
    """The provider's own explanation, from the usual JSON error shapes, scrubbed and cut short."""
    detail = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            detail = str(err.get("message") or err.get("code") or "")
        elif isinstance(err, str):
            detail = err
        detail = detail or str(body.get("detail") or body.get("title") or body.get("message") or "")
        if not detail and isinstance(body.get("detail"), list):
            detail = str(body["detail"])
    elif body is None:
        detail = response.text[:MAX_DETAIL] if response.headers.get(
            "content-type", "").startswith("text/") else ""
    detail = scrub(detail, token).strip()
    return detail[:MAX_DETAIL]


def failure_for_response(provider: str, response: httpx.Response, token: str | None,
                         what: str) -> TaskFailure:
    status = response.status_code
    if status in (401, 403):
        return AuthFailed(f"{provider} rejected the token (HTTP {status}) while {what}")
    if status == 402:
        return AuthFailed(f"{provider} refused for billing reasons (HTTP 402) while {what}")
    detail = provider_detail(response, token)
    said = f": {detail}" if detail else ""
    if status == 429:
        return RateLimited(f"{provider} rate limit (HTTP 429) while {what}{said}",
                           retry_after=parse_retry_after(response.headers.get("retry-after")))
    if status == 408:
        return Timeout(f"{provider} timed out (HTTP 408) while {what}")
    if status >= 500:
        return ProviderFailed(f"{provider} server error (HTTP {status}) while {what}{said}",
                              retryable=True,
                              retry_after=parse_retry_after(response.headers.get("retry-after")))
    return InvalidInput(f"{provider} refused the request (HTTP {status}) while {what}{said}")


def content_type_for(url: str, default: str = "image/png") -> str:
    guessed, _ = mimetypes.guess_type(urlsplit(url).path)
    return guessed or default


def decode_data_uri(uri: str, provider: str) -> tuple[bytes, str]:
    """`data:image/png;base64,...` → (bytes, content type)."""
    header, sep, payload = uri.partition(",")
    if not sep or ";base64" not in header:
        raise ProviderFailed(f"{provider} returned an unsupported data URI", retryable=False)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ProviderFailed(f"{provider} returned invalid base64 data", retryable=False) from None
    return data, header[5:].split(";", 1)[0] or "application/octet-stream"


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from the image header; (0, 0) when it cannot be read."""
    try:
        from PIL import Image
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "WEBP")) as image:
            return image.size
    except Exception:  # any undecodable payload: size is informative only
        return 0, 0


class HTTPProvider:
    """Base of the hosted-API adapters. One `httpx.AsyncClient` per adapter, shared by calls.

    `poll_initial`/`poll_max`: polling delays (×1.5 each poll) while a remote job runs.
    `cancel_timeout`: how long a remote cancel may take after a timeout or a cancellation;
    the call returns at most that long after its deadline.
    `poll_error_budget`: consecutive transient errors (5xx, connection) tolerated on polls
    (idempotent GETs) before the call fails and the remote job is cancelled.
    `shards`: how many connection pools (httpx clients) requests are spread over, round-robin.
    httpcore 1.0's pool spends O(connections²) CPU per request (encode/httpcore#1035); with 100
    requests in flight one pool cost 6.1 ms of CPU per request here, 16 small pools 1.55 ms.
    Ignored when `client` is given (the caller owns that one client).
    """

    name = "http"

    def __init__(self, base_url: str, *, client: httpx.AsyncClient | None = None,
                 poll_initial: float = 0.1, poll_max: float = 2.0, cancel_timeout: float = 3.0,
                 poll_error_budget: int = 3, shards: int = 16,
                 max_connections: int = 512) -> None:
        self.base_url = base_url.rstrip("/")
        self._owns_client = client is None
        if client is not None:
            self._clients = [client]
        else:
            per_shard = max(1, max_connections // max(1, shards))
            self._clients = [new_client(max_connections=per_shard) for _ in range(max(1, shards))]
        self._next_client = itertools.cycle(self._clients)
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self.cancel_timeout = cancel_timeout
        self.poll_error_budget = poll_error_budget
        self._cancels: set[asyncio.Task] = set()

    @property
    def client(self) -> httpx.AsyncClient:
        """A client of this adapter (e.g. for `inline_outputs`)."""
        return self._clients[0]

    # --- the public call ---------------------------------------------------------------------
    async def generate(self, request: GenerateRequest, token: str | None,
                       deadline: float) -> list[Output]:
        started = time.monotonic()
        try:
            if not token:
                raise AuthFailed(f"no token for {self.name}")
            remaining = deadline - started
            if remaining <= 0:
                raise Timeout(f"{self.name}: deadline passed before the call")
            try:
                async with asyncio.timeout(remaining):
                    with tracing.span("imagemesh.provider.generate", kind="client", provider=self.name,
                                      model=request.model or None):
                        outputs = await self._generate(request, token, deadline)
            except TimeoutError:
                raise Timeout(f"{self.name} did not finish within the deadline "
                              f"({remaining:.1f}s)") from None
        except TaskFailure as exc:
            metrics.PROVIDER_REQUEST.labels(self.name).observe(time.monotonic() - started)
            metrics.PROVIDER_ERRORS.labels(self.name, exc.code).inc()
            log.info("%s call failed: %s %s", self.name, exc.code, exc.message)
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.PROVIDER_ERRORS.labels(self.name, "INTERNAL").inc()
            # No traceback text with locals; the exception type says which bug.
            log.error("%s adapter bug: %s", self.name, type(exc).__name__)
            raise Internal(f"{self.name} adapter error: {type(exc).__name__}") from None
        metrics.PROVIDER_REQUEST.labels(self.name).observe(time.monotonic() - started)
        return outputs

    async def _generate(self, request: GenerateRequest, token: str,
                        deadline: float) -> list[Output]:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Wait (bounded) for remote cancels still running, then close the client."""
        if self._cancels:
            await asyncio.wait(set(self._cancels), timeout=self.cancel_timeout)
        if self._owns_client:
            for client in self._clients:
                await client.aclose()

    # --- pieces for subclasses -------------------------------------------------------------------
    def auth_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def send(self, method: str, url: str, *, token: str, deadline: float, what: str,
                   json: Any = None, headers: dict[str, str] | None = None,
                   ok: tuple[int, ...] = ()) -> httpx.Response:
        """One HTTP exchange; returns a 2xx (or `ok`) response, raises a mapped TaskFailure."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"{self.name}: deadline reached while {what}")
        all_headers = self.auth_headers(token)
        all_headers.update(tracing.inject())  # traceparent: the provider may join our trace
        if headers:
            all_headers.update(headers)
        try:
            response = await next(self._next_client).request(method, url, json=json, headers=all_headers,
                                                  timeout=max(remaining, 0.05))
        except httpx.ConnectTimeout:
            raise Unavailable(f"{self.name}: connecting timed out while {what}") from None
        except httpx.PoolTimeout:
            raise Unavailable(f"{self.name}: no free connection while {what}") from None
        except httpx.TimeoutException:
            raise Timeout(f"{self.name}: no answer before the deadline while {what}") from None
        except httpx.TransportError as exc:
            raise Unavailable(f"{self.name}: {type(exc).__name__} while {what}") from None
        if response.is_success or response.status_code in ok:
            return response
        raise failure_for_response(self.name, response, token, what)

    @staticmethod
    def json_of(response: httpx.Response, provider: str, what: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise ProviderFailed(f"{provider} sent a non-JSON answer while {what}",
                                 retryable=True) from None
        if not isinstance(body, dict):
            raise ProviderFailed(f"{provider} sent an unexpected answer while {what}",
                                 retryable=True)
        return body

    async def poll_until(self, fetch: Callable[[], Awaitable[Any]],
                         done: Callable[[Any], bool], deadline: float) -> Any:
        """Call `fetch()` with growing pauses until `done(result)`; the deadline (enforced by
        `generate`) bounds it. Transient errors are tolerated up to `poll_error_budget`."""
        delay = self.poll_initial
        errors = 0
        while True:
            try:
                result = await fetch()
                errors = 0
                if done(result):
                    return result
            except (ProviderFailed, Unavailable) as exc:
                if not exc.retryable:
                    raise
                errors += 1
                if errors >= self.poll_error_budget:
                    raise
            remaining = deadline - time.monotonic()
            await asyncio.sleep(max(0.0, min(delay, remaining)))
            delay = min(self.poll_max, delay * 1.5)

    async def submit(self, create: Awaitable[httpx.Response],
                     cancel_created: Callable[[httpx.Response], Awaitable[None]],
                     *, budget: float) -> httpx.Response:
        """Send a job-creating request that must not be orphaned.

        If we are cancelled (a lost race, or the deadline) while the request is out, the job may
        already exist at the provider, yet we do not know its id until the answer arrives. So the
        request keeps going (shielded); when it answers, `cancel_created(response)` stops the job.
        The caller waits for that up to `budget` seconds (the job keeps holding the key's slot
        until then, so the caller's lease must too), then the cancellation propagates.
        """
        task = asyncio.ensure_future(create)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            async def stop() -> None:
                try:
                    response = await task
                except Exception:
                    return  # no job was created, or we cannot know its id
                await cancel_created(response)
            await self.cancel_remote(stop, "(answer pending)", budget=budget)
            raise

    async def cancel_remote(self, cancel: Callable[[], Awaitable[None]], job: str, *,
                            budget: float | None = None) -> None:
        """Run `cancel()` best-effort: shielded from a second cancellation, bounded by `budget`
        (default `cancel_timeout`); a cancel still running after that continues in the
        background until `aclose`. Its failure is logged (without token), never raised."""
        budget = self.cancel_timeout if budget is None else budget

        async def run() -> None:
            try:
                await cancel()
            except Exception as exc:
                log.info("%s: cancelling job %s failed: %s", self.name, job,
                         getattr(exc, "message", type(exc).__name__))

        task = asyncio.get_running_loop().create_task(run())
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)
        try:
            await asyncio.wait_for(asyncio.shield(task), budget)
        except TimeoutError:
            log.info("%s: cancel of job %s still running after %.1fs", self.name, job, budget)
