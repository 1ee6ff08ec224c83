"""gRPC servicers of the public API: they translate, `BatchService` decides.

Status codes: UNAUTHENTICATED (no or wrong key) and PERMISSION_DENIED (role), both from
`interceptors.Authenticator` before the request is read, INVALID_ARGUMENT
(the whole request is wrong: field and limit in the message), NOT_FOUND, RESOURCE_EXHAUSTED
(overload, with a retry hint in `retry-after-ms` trailing metadata: also past the caps on open
streams, `streams.OpenStreams`), UNAVAILABLE (Redis down).

The streaming methods relay batch events as the bytes the client receives (`gateway.follower`;
`gateway.wire` passes bytes through): nothing here parses or serialises an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from redis.exceptions import RedisError

from imagemesh import logs, tracing
from imagemesh.logs import log_context
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import imagemesh_pb2_grpc as pb_grpc

from .batches import BadCursor, public_id
from .files_api import FileTransfer
from .interceptors import current_caller
from .service import BatchService, Forbidden, NotFound, Overloaded
from .streams import OpenStreams
from .validation import BadRequest

log = logging.getLogger("imagemesh.gateway.api")


@contextlib.asynccontextmanager
async def translated(context: grpc.aio.ServicerContext):
    """Turn domain exceptions into gRPC statuses."""
    try:
        yield
    except (BadRequest, BadCursor) as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except NotFound as exc:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    except Forbidden as exc:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    except Overloaded as exc:
        context.set_trailing_metadata((("retry-after-ms", str(int(exc.retry_after * 1000))),))
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    except RedisError as exc:
        log.warning("Redis unavailable: %s", type(exc).__name__)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the task store (Redis) is unavailable; retry")


async def _until(events: AsyncIterator, stop: asyncio.Event) -> AsyncIterator:
    """The items of `events` until it ends or `stop` is set, whichever comes first."""
    it = aiter(events)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            nxt = asyncio.ensure_future(anext(it))
            done, _ = await asyncio.wait({nxt, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                nxt.cancel()
                with contextlib.suppress(BaseException):
                    await nxt
                return
            try:
                item = nxt.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        stopper.cancel()
        with contextlib.suppress(BaseException):
            await it.aclose()


class ImageMeshServicer(FileTransfer, pb_grpc.ImageMeshServicer):
    """Callers are authenticated (key and role) by `interceptors.Authenticator` before a
    request is read; each method takes the caller from `current_caller()`."""

    def __init__(self, service: BatchService, streams: OpenStreams) -> None:
        self.service = service
        self.streams = streams
        self._cleanups: set[asyncio.Task] = set()

    async def SubmitBatch(self, request, context):
        caller = current_caller()
        async with translated(context):
            self.streams.claim(caller.tenant)  # before anything is submitted
        try:
            with log_context(tenant=caller.tenant):
                async with translated(context):
                    # The caller's trace (gRPC metadata) goes on in this span, and from it into
                    # each task's queue entry.
                    with tracing.span("imagemesh.gateway.SubmitBatch", kind="server",
                                      parent=dict(context.invocation_metadata() or ()), tasks=len(request.tasks)):
                        batch_id = await self.service.submit(caller, request)
                with log_context(batch_id=batch_id):
                    log.debug("batch accepted: %d tasks", len(request.tasks))
                    del request  # the tasks are in Redis now; don't hold them while the batch streams
                    async with translated(context), contextlib.aclosing(self.service.events(batch_id)) as events:
                        async for event in events:
                            yield event
        finally:
            self.streams.release(caller.tenant)

    async def Stream(self, request_iterator, context):
        caller = current_caller()
        async with translated(context):
            self.streams.claim(caller.tenant)
        try:
            async with contextlib.aclosing(self._session(caller, request_iterator, context)) as events:
                async for event in events:
                    yield event
        finally:
            self.streams.release(caller.tenant)

    async def _session(self, caller, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("open"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be `open`")
        async with translated(context):
            batch_id = await self.service.open_session(caller, first.open)
        logs.bind(tenant=caller.tenant, batch_id=batch_id)  # this RPC's task (and the reader's)
        tokens = dict(first.open.credentials)
        closed = asyncio.Event()
        failed = asyncio.Event()
        failure: list[BaseException] = []

        async def read_tasks() -> None:
            index = 0
            try:
                async for msg in request_iterator:
                    if msg.HasField("task"):
                        await self.service.add_to_session(caller, batch_id, index, msg.task, tokens,
                                                          first.open.priority)
                        index += 1
                    elif msg.HasField("close"):
                        await self.service.close_session(batch_id)
                        closed.set()
                        return
                # The request stream ended without `close`: the client went away (a half-close
                # can't be told from a disconnect here).
                await self._abandon(caller, batch_id, first.open)
                closed.set()
            except (BadRequest, Overloaded, RedisError) as exc:
                # The session can't go on (misuse, overload, Redis down): close it, so the tasks
                # accepted so far finish and summarise (WatchBatch follows them), and answer the
                # status now.
                failure.append(exc)
                with contextlib.suppress(Exception):
                    await self.service.close_session(batch_id)
                closed.set()
                failed.set()
            except Exception as exc:  # the request stream broke: the client is gone (see finally)
                failure.append(exc)

        reader = asyncio.create_task(read_tasks())
        try:
            async with translated(context):
                async for event in _until(self.service.events(batch_id), failed):
                    yield event
                if failed.is_set():
                    raise failure[0]
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
            if not closed.is_set():
                # This task is being cancelled (the client left): finish the job in a task of
                # its own, which a second cancellation of this one can't interrupt.
                cleanup = asyncio.create_task(self._abandon(caller, batch_id, first.open))
                self._cleanups.add(cleanup)
                cleanup.add_done_callback(self._cleanups.discard)

    async def _abandon(self, caller, batch_id: str, open_msg: pb.StreamOpen) -> None:
        """A session left without `close`: cancel it, or let it run if the client asked."""
        if open_msg.keep_running_on_disconnect:
            await self.service.close_session(batch_id)
        else:
            await self.service.cancel(caller, public_id(batch_id))

    async def WatchBatch(self, request, context):
        caller = current_caller()
        async with translated(context):
            self.streams.claim(caller.tenant)
        try:
            async with translated(context), \
                    contextlib.aclosing(self.service.watch(caller, request.batch_id, request.after_cursor)) as events:
                async for event in events:
                    yield event
        finally:
            self.streams.release(caller.tenant)

    async def GetBatch(self, request, context):
        caller = current_caller()
        async with translated(context):
            return await self.service.status(caller, request.batch_id)

    async def CancelBatch(self, request, context):
        caller = current_caller()
        async with translated(context):
            return await self.service.cancel(caller, request.batch_id)
