"""The gRPC side of worker streams: translates WorkerMessage/GatewayMessage frames to the
dispatcher's calls. One `Connect` call per worker, held open for the worker's life.

A worker that sends nothing (no heartbeat, no result) for `3 × heartbeat_interval` is
considered dead: its stream is ended and its attempts are re-queued. So is a worker that breaks
the protocol (credits outside 0..capacity): its stream ends INVALID_ARGUMENT, with a log line.
Whatever ends a stream, every error is logged and the worker's attempts are requeued at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import grpc

from imagemesh.v1 import worker_pb2 as wpb
from imagemesh.v1 import worker_pb2_grpc as wpb_grpc

from .dispatch import POOLS, Dispatcher
from .pools import BadCredits, Worker

log = logging.getLogger("imagemesh.gateway.workers")


class WorkerLinkServicer(wpb_grpc.WorkerLinkServicer):
    """Worker keys only: `interceptors.Authenticator` refuses other callers before a frame is read."""

    def __init__(self, dispatcher: Dispatcher, *, gateway_id: str, heartbeat_interval: float) -> None:
        self.dispatcher = dispatcher
        self.gateway_id = gateway_id
        self.heartbeat = heartbeat_interval

    async def Connect(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must carry `hello`")
        hello = first.hello
        if hello.pool not in POOLS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"hello.pool: {hello.pool!r}, must be one of {', '.join(POOLS)}")
        if not 1 <= hello.capacity <= 1024:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"hello.capacity: {hello.capacity}, must be 1..1024")
        if not self.dispatcher.accepting:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this gateway is draining; connect to another")
        pool = self.dispatcher.pools[hello.pool]
        worker = Worker(worker_id=hello.worker_id or context.peer(), pool=hello.pool,
                        capacity=hello.capacity, device=hello.device)
        old = pool.workers.get(worker.worker_id)
        if old is not None:
            worker.worker_id = f"{worker.worker_id}@{context.peer()}"
        pool.add(worker)
        log.info("worker %s joined pool %s (capacity %d, %s)", worker.worker_id, worker.pool, worker.capacity, worker.device or "?")
        reader = asyncio.create_task(self._read(worker, first, request_iterator))
        clean = False
        refused: BadCredits | None = None
        try:
            yield wpb.GatewayMessage(welcome=wpb.Welcome(
                gateway_id=self.gateway_id, heartbeat_interval_ms=int(self.heartbeat * 1000)))
            while not reader.done():
                frame = await worker.outbox.take(timeout=self.heartbeat)
                if frame is not None:
                    yield frame
                if time.monotonic() - worker.last_seen > 3 * self.heartbeat:
                    log.warning("worker %s missed its heartbeats; dropping it", worker.worker_id)
                    break
            if reader.done() and not reader.cancelled():
                exc = reader.exception()
                if isinstance(exc, BadCredits):
                    refused = exc
                elif exc is not None and not isinstance(exc, (grpc.aio.AioRpcError, asyncio.CancelledError)):
                    log.error("worker %s: handling its messages failed (%s: %s); dropping the worker",
                              worker.worker_id, type(exc).__name__, exc)
            clean = (reader.done() and not reader.cancelled() and reader.exception() is None
                     and worker.draining)
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            pool.remove(worker)
            # Drained workers hand back what they had; anything left is lost with the worker.
            await self.dispatcher.on_worker_lost(worker)
            log.info("worker %s left pool %s (%s)", worker.worker_id, worker.pool, "drained" if clean else "lost")
        if refused is not None:
            log.warning("worker %s broke the protocol: %s", worker.worker_id, refused)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(refused))

    async def _read(self, worker: Worker, first: wpb.WorkerMessage, requests) -> None:
        await self._handle(worker, first)
        async for msg in requests:
            await self._handle(worker, msg)

    async def _handle(self, worker: Worker, msg: wpb.WorkerMessage) -> None:
        worker.last_seen = time.monotonic()
        pool = self.dispatcher.pools[worker.pool]
        if msg.results:
            await self.dispatcher.on_results(worker, list(msg.results))
        if msg.returned:
            await self.dispatcher.on_returned(worker, list(msg.returned))
        if msg.draining and not worker.draining:
            worker.draining = True
            worker.credits = 0
            pool.export()
        if msg.credits != 0 and not worker.draining:
            pool.grant(worker, msg.credits)  # raises BadCredits: the stream ends
