"""The worker side of the worker protocol, shared by the generation and enhance workers.

A `WorkerRuntime` dials the gateway, says hello (pool, capacity), grants one credit per free
slot, runs each `Assignment` with its `Executor` (at most `capacity` at once), and streams the
results back, several per frame when several are ready. It heartbeats while idle and reconnects
with backoff when the stream breaks.

What happens to running work when the stream breaks: it is cancelled. Nobody renews its lease
any more and its result could not be delivered; the gateway (this one after a restart, or
another) re-runs the task as a new attempt. An attempt's `budget_ms` is enforced here too: a
watchdog cancels the executor at that point whatever the gateway does.

On drain (SIGTERM): health NOT_SERVING, `draining` sent (no more assignments), running work
gets `grace` seconds to finish, what is left is cancelled and handed back (`returned`).

Readiness means "connected to a gateway and able to work": the health service's overall status
is SERVING only between the gateway's `welcome` and the end of that stream (NOT_SERVING while
reconnecting); the `liveness` service is SERVING while the process runs. A key the gateway
refuses (UNAUTHENTICATED or PERMISSION_DENIED) `AUTH_REFUSALS_BEFORE_EXIT` times in a row
without a welcome in between is permanent: the worker stops with one line (`GatewayRefused`,
exit 2) instead of retrying forever while looking alive.

Transport: TLS or mutual TLS to the gateway when `tls` is given (`imagemesh.tls.ChannelTls`),
its files read again on every reconnect; the health port is plaintext (kubelet's probes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import grpc

from imagemesh.errors import Internal, TaskFailure
from imagemesh import metrics, tracing
from imagemesh.logs import bind, log_context
from imagemesh.podcost import PodDeletionCost
from imagemesh.health import HealthServer
from imagemesh.process import FatalError, stop_signal
from imagemesh.tls import ChannelTls, TlsConfigError, channel, describe_channel
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import worker_pb2 as wpb
from imagemesh.v1 import worker_pb2_grpc as wpb_grpc

log = logging.getLogger("imagemesh.worker")

AUTH_REFUSALS_BEFORE_EXIT = 3
# Room left in a frame for what wraps a result on its way to the client (a BatchEvent's batch id
# and cursor, the worker frame's heartbeat): results are capped at max_message_bytes minus this.
FRAME_MARGIN = 16 * 1024
PERMANENT = {grpc.StatusCode.UNAUTHENTICATED: "does not know this worker's key (IMAGEMESH_API_KEY)",
             grpc.StatusCode.PERMISSION_DENIED: "refuses this worker's key: its role is not `worker` (IMAGEMESH_API_KEY)"}


class GatewayRefused(FatalError):
    """The gateway refused this worker's key several times in a row: retrying can't help."""


class Executor(Protocol):
    async def run(self, assignment: wpb.Assignment) -> wpb.AttemptResult:
        """Run one attempt. Raise TaskFailure (or return a FAILED result) on failure; must be
        cancellable (asyncio.CancelledError) at any await."""
        ...


def failed(assignment: wpb.Assignment, failure: TaskFailure, **extra) -> wpb.AttemptResult:
    return wpb.AttemptResult(
        attempt_id=assignment.attempt_id, task_id=assignment.task_id, attempt=assignment.attempt,
        fence=assignment.fence, state=pb.FAILED, provider=assignment.provider,
        error=pb.TaskError(code=failure.code, message=failure.message, retryable=failure.retryable),
        fallback_ok=failure.fallback_ok, **extra)


def dial_tls(s) -> ChannelTls | None:
    """The worker's TLS from its settings (`imagemesh.config.WorkerRuntimeSettings`): None for
    plaintext; FatalError naming the setting when the files can't be used."""
    try:
        return ChannelTls.from_settings(s.tls_ca, s.tls_cert, s.tls_key, s.tls_server_name)
    except TlsConfigError as exc:
        raise FatalError(str(exc)) from None


async def serve(runtime: "WorkerRuntime", health: HealthServer, drain_seconds: float) -> None:
    """Live, and ready whenever connected; run until SIGTERM/SIGINT, then NOT_SERVING and drain
    within `drain_seconds`. Raises GatewayRefused (after stopping the health server) when the
    gateway keeps refusing the key."""
    await health.set_live(True)
    runtime.on_ready = health.set
    stop = asyncio.Event()
    run = asyncio.create_task(runtime.run(stop, drain_seconds))
    signalled = asyncio.create_task(stop_signal())
    try:
        await asyncio.wait({run, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if signalled.done():
            await health.set(False)
            stop.set()
        await run
    finally:
        signalled.cancel()
        with contextlib.suppress(BaseException):
            await signalled
        await health.stop()


class WorkerRuntime:
    def __init__(self, *, gateway: str, pool: str, capacity: int, executor: Executor,
                 worker_id: str, api_key: str, device: str = "", providers: tuple[str, ...] = (),
                 heartbeat: float = 2.0, max_message_bytes: int = 16 * 1024 * 1024,
                 deletion_cost: PodDeletionCost | None = None, tls: ChannelTls | None = None) -> None:
        self.gateway = gateway
        self.pool = pool
        self.capacity = capacity
        self.executor = executor
        self.worker_id = worker_id
        self.api_key = api_key
        self.device = device
        self.providers = providers
        self.heartbeat = heartbeat
        self.max_message_bytes = max_message_bytes
        self.deletion_cost = deletion_cost
        self.tls = tls
        # Called with True on the gateway's welcome, False when that stream ends (readiness).
        self.on_ready: Callable[[bool], Awaitable[None]] | None = None
        self.running: dict[str, asyncio.Task] = {}
        # The gateway connection while one is up: object transfers (imagemesh.uploads) use it.
        self.channel: grpc.aio.Channel | None = None
        self.connected = asyncio.Event()
        self.draining = False
        self._results: list[wpb.AttemptResult] = []
        self._returned: list[str] = []
        self._outbox = asyncio.Event()
        self._sending = False
        self._goaway = asyncio.Event()
        self._idle = asyncio.Event()
        self._welcomed = False
        metrics.WORKER_CAPACITY.labels(pool).set(capacity)

    # -- one connection -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, grace: float) -> None:
        """Serve until `stop` is set, then drain within `grace` seconds. Raises GatewayRefused
        after AUTH_REFUSALS_BEFORE_EXIT refusals of the key in a row."""
        bind(worker_id=self.worker_id)  # every log line of this worker's tasks
        log.info("gRPC transport to %s: %s", self.gateway, describe_channel(self.tls))
        backoff = 0.1
        refusals = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self._session(stop, grace)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning("gateway stream ended: %s %s", exc.code().name, exc.details())
                refusals = refusals + 1 if exc.code() in PERMANENT and not self._welcomed else 0
                if refusals >= AUTH_REFUSALS_BEFORE_EXIT:
                    raise GatewayRefused(f"the gateway {self.gateway} {PERMANENT[exc.code()]}: "
                                         f"{exc.code().name} {refusals} times in a row; stopping") from None
            except TlsConfigError as exc:  # files replaced mid-rotation: the next try reads them again
                log.warning("TLS files unusable, retrying: %s", exc)
            except Exception:
                log.exception("worker session failed")
            finally:
                self.channel = None
                self.connected.clear()
                metrics.WORKER_CONNECTED.labels(self.pool).set(0)
                await self._ready(False)
                await self._cancel_all()
            if stop.is_set():
                break
            if time.monotonic() - started > 10:
                backoff = 0.1
            delay = backoff * (0.5 + random.random())
            backoff = min(backoff * 2, 5.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _ready(self, ready: bool) -> None:
        if self.on_ready is not None:
            await self.on_ready(ready)

    async def _session(self, stop: asyncio.Event, grace: float) -> None:
        self._welcomed = False
        options = [("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.max_send_message_length", self.max_message_bytes),
                   ("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_timeout_ms", 10_000)]
        async with channel(self.gateway, self.tls, options) as link:
            self.channel = link
            stub = wpb_grpc.WorkerLinkStub(link)
            call = stub.Connect(metadata=(("authorization", f"Bearer {self.api_key}"),))
            await call.write(wpb.WorkerMessage(
                hello=wpb.WorkerHello(worker_id=self.worker_id, pool=self.pool, capacity=self.capacity,
                                      device=self.device, providers=list(self.providers)),
                credits=self.capacity))
            welcome = await call.read()
            if welcome is grpc.aio.EOF:
                raise ConnectionError("the gateway closed the stream before welcoming us")
            self._welcomed = True
            self.connected.set()
            metrics.WORKER_CONNECTED.labels(self.pool).set(1)
            if not stop.is_set():
                await self._ready(True)
            log.info("connected to gateway %s (%s)", welcome.welcome.gateway_id, self.gateway)
            self._goaway.clear()
            self._idle.clear()
            writer = asyncio.create_task(self._write(call))
            stopper = asyncio.create_task(stop.wait())
            reader = asyncio.create_task(self._read(call))
            idle = asyncio.create_task(self._idle.wait())
            try:
                done, _ = await asyncio.wait({writer, reader, stopper, idle}, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    await self._drain(call, writer, grace)
                    return
                if idle in done:
                    await self._flush(writer)
                    await call.done_writing()
                    return
                for t in done:
                    t.result()  # re-raise what ended the stream
            finally:
                for t in (writer, stopper, reader, idle):
                    t.cancel()
                for t in (writer, stopper, reader, idle):
                    with contextlib.suppress(BaseException):
                        await t

    async def _read(self, call) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                return
            for a in msg.assignments:
                self._start(a)
            for attempt_id in msg.cancels:
                task = self.running.get(attempt_id)
                if task is not None:
                    task.cancel()
            if msg.goaway and not self._goaway.is_set():
                # The gateway drains: finish what we have here (results still flow on this
                # stream), take nothing new, then reconnect (to another replica).
                log.info("gateway is draining; reconnecting once in-flight work is done")
                self._goaway.set()
                self._outbox.set()
                if not self.running:
                    self._idle.set()

    async def _write(self, call) -> None:
        """Send what is ready, in as few frames as fit `max_message_bytes`; heartbeat when
        there is nothing to say."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._outbox.wait(), self.heartbeat)
            self._outbox.clear()
            results, self._results = self._results, []
            returned, self._returned = self._returned, []
            stopping = self.draining or self._goaway.is_set()
            self._sending = True
            try:
                for i, chunk in enumerate(self._frames(results)):
                    await call.write(wpb.WorkerMessage(
                        results=chunk, returned=returned if i == 0 else (),
                        credits=0 if stopping else len(chunk), draining=stopping,
                        heartbeat=wpb.Heartbeat(in_flight=len(self.running), sent_unix_ms=int(time.time() * 1000))))
            finally:
                self._sending = False
            if self.deletion_cost is not None:
                await self.deletion_cost.update(len(self.running))

    def _frames(self, results: list[wpb.AttemptResult]) -> list[list[wpb.AttemptResult]]:
        """Results grouped into frames the gateway accepts (`max_message_bytes`, less a margin
        for the event that carries a result on to the client). A result that can't fit any
        frame (large inline outputs) fails alone, so it never breaks the stream and with it
        every other attempt on it (the gateway would refuse the frame: RESOURCE_EXHAUSTED)."""
        limit = self.max_message_bytes - FRAME_MARGIN
        frames: list[list[wpb.AttemptResult]] = [[]]
        size = 0
        for r in results:
            n = r.ByteSize()
            if n > limit:
                log.warning("attempt %s: its result is %d bytes, more than a frame carries (%d); failing it",
                            r.attempt_id, n, limit)
                r = wpb.AttemptResult(
                    attempt_id=r.attempt_id, task_id=r.task_id, attempt=r.attempt, fence=r.fence, state=pb.FAILED,
                    provider=r.provider, run_ms=r.run_ms, error=pb.TaskError(
                        code="OUTPUT_TOO_LARGE", retryable=False,
                        message=f"the result is {n} bytes, more than one gRPC message may carry ({limit}, "
                                "IMAGEMESH_MAX_MESSAGE_BYTES): ask for URLs rather than inline outputs, or "
                                "fewer or smaller outputs"))
                n = r.ByteSize()
            if frames[-1] and size + n > limit:
                frames.append([])
                size = 0
            frames[-1].append(r)
            size += n
        return frames

    # -- attempts ---------------------------------------------------------------------------
    def _start(self, a: wpb.Assignment) -> None:
        if a.attempt_id in self.running:
            return
        task = asyncio.create_task(self._attempt(a), name=a.attempt_id)
        self.running[a.attempt_id] = task
        metrics.WORKER_IN_FLIGHT.labels(self.pool).set(len(self.running))

    async def _attempt(self, a: wpb.Assignment) -> None:
        # Log lines of this attempt carry its ids; its span continues the task's trace.
        with log_context(batch_id=a.task_id.rpartition("-")[0], task_id=a.task_id, attempt=a.attempt), \
                tracing.span("imagemesh.worker.attempt", parent=a.trace_context, kind="consumer",
                             task_id=a.task_id, attempt=a.attempt, provider=a.provider or None):
            await self._run_attempt(a)

    async def _run_attempt(self, a: wpb.Assignment) -> None:
        started = time.monotonic()
        try:
            budget = a.budget_ms / 1000 if a.budget_ms > 0 else None
            try:
                result = await asyncio.wait_for(self.executor.run(a), budget)
            except asyncio.TimeoutError:
                result = failed(a, TaskFailure(f"the attempt ran past its budget of {budget:.0f}s", retryable=True))
                result.error.code = "TIMEOUT"
            except TaskFailure as exc:
                result = failed(a, exc)
            except asyncio.CancelledError:
                result = wpb.AttemptResult(attempt_id=a.attempt_id, task_id=a.task_id, attempt=a.attempt,
                                           fence=a.fence, state=pb.CANCELLED, provider=a.provider)
            except Exception as exc:
                log.exception("attempt %s failed with a bug", a.attempt_id)
                result = failed(a, Internal(f"worker error: {type(exc).__name__}"))
            result.run_ms = result.run_ms or int((time.monotonic() - started) * 1000)
            log.debug("attempt finished: %s in %d ms", pb.TaskState.Name(result.state), result.run_ms)
            self._results.append(result)
            self._outbox.set()
        finally:
            self.running.pop(a.attempt_id, None)
            metrics.WORKER_IN_FLIGHT.labels(self.pool).set(len(self.running))
            if self._goaway.is_set() and not self.running:
                self._idle.set()

    async def _cancel_all(self) -> None:
        tasks = list(self.running.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        self._results.clear()  # undeliverable: the gateway re-runs these attempts
        self._returned.clear()

    async def _flush(self, writer: asyncio.Task) -> None:
        """Let the writer send what is pending (bounded), then stop it."""
        self._outbox.set()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if not (self._results or self._returned or self._outbox.is_set() or self._sending):
                break
        writer.cancel()
        with contextlib.suppress(BaseException):
            await writer

    async def _drain(self, call, writer: asyncio.Task, grace: float) -> None:
        self.draining = True
        self._outbox.set()
        deadline = time.monotonic() + grace
        while self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = list(self.running)
        tasks = list(self.running.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        # Hand back what was cancelled, instead of reporting it as CANCELLED.
        self._results = [r for r in self._results if r.attempt_id not in left]
        self._returned.extend(left)
        await self._flush(writer)
        await call.done_writing()
        log.info("drained: %d attempts handed back", len(left))
