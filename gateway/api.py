"""gRPC servicers of the public API: they translate, `BatchService` decides.

Status codes: UNAUTHENTICATED (no or wrong key), PERMISSION_DENIED (role), INVALID_ARGUMENT
(the whole request is wrong: field and limit in the message), NOT_FOUND, RESOURCE_EXHAUSTED
(overload, with a retry hint in `retry-after-ms` trailing metadata), UNAVAILABLE (Redis down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from redis.exceptions import RedisError

from imagemesh import metrics
from imagemesh.auth import ApiKeys, Caller
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import imagemesh_pb2_grpc as pb_grpc

from .files_api import FileTransfer
from .service import BatchService, Forbidden, NotFound, Overloaded
from .validation import BadRequest

log = logging.getLogger("imagemesh.gateway.api")


async def authenticate(keys: ApiKeys, context: grpc.aio.ServicerContext, *roles: str) -> Caller:
    metadata = dict(context.invocation_metadata() or ())
    caller = keys.identify(metadata.get("authorization"))
    if caller is None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "missing or unknown API key: send metadata 'authorization: Bearer <key>'")
    if roles and caller.role not in roles and not caller.is_admin:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"this call needs the role {' or '.join(roles)}; the key has role {caller.role}")
    return caller


@contextlib.asynccontextmanager
async def translated(context: grpc.aio.ServicerContext):
    """Turn domain exceptions into gRPC statuses."""
    try:
        yield
    except BadRequest as exc:
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


class ImageMeshServicer(FileTransfer, pb_grpc.ImageMeshServicer):
    def __init__(self, service: BatchService, keys: ApiKeys) -> None:
        self.service = service
        self.keys = keys
        self._cleanups: set[asyncio.Task] = set()

    async def SubmitBatch(self, request, context):
        caller = await authenticate(self.keys, context, "client")
        metrics.CLIENT_STREAMS.inc()
        try:
            async with translated(context):
                batch_id = await self.service.submit(caller, request)
            del request  # the tasks are in Redis now; don't hold them while the batch streams
            async with translated(context):
                async for event in self.service.events(batch_id):
                    yield event
        finally:
            metrics.CLIENT_STREAMS.dec()

    async def Stream(self, request_iterator, context):
        caller = await authenticate(self.keys, context, "client")
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("open"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be `open`")
        async with translated(context):
            batch_id = await self.service.open_session(caller, first.open)
        tokens = dict(first.open.credentials)
        closed = asyncio.Event()
        failure: list[BaseException] = []

        async def read_tasks() -> None:
            index = 0
            try:
                async for msg in request_iterator:
                    if msg.HasField("task"):
                        await self.service.add_to_session(caller, batch_id, index, msg.task, tokens)
                        index += 1
                    elif msg.HasField("close"):
                        await self.service.close_session(batch_id)
                        closed.set()
                        return
                # The request stream ended without `close`: the client went away (a half-close
                # can't be told from a disconnect here).
                await self._abandon(caller, batch_id, first.open)
                closed.set()
            except BadRequest as exc:
                # Session-level misuse: end the batch (its summary wakes the response side,
                # which then answers INVALID_ARGUMENT).
                failure.append(exc)
                await self.service.close_session(batch_id)
                closed.set()
            except Exception as exc:  # the request stream broke: the client is gone (see finally)
                failure.append(exc)

        reader = asyncio.create_task(read_tasks())
        metrics.CLIENT_STREAMS.inc()
        try:
            async with translated(context):
                async for event in self.service.events(batch_id):
                    if failure and isinstance(failure[0], (BadRequest, RedisError)):
                        raise failure[0]
                    yield event
        finally:
            metrics.CLIENT_STREAMS.dec()
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
            await self.service.cancel(caller, batch_id)

    async def WatchBatch(self, request, context):
        caller = await authenticate(self.keys, context, "client")
        metrics.CLIENT_STREAMS.inc()
        try:
            async with translated(context):
                async for event in self.service.watch(caller, request.batch_id, request.after_cursor):
                    yield event
        finally:
            metrics.CLIENT_STREAMS.dec()

    async def GetBatch(self, request, context):
        caller = await authenticate(self.keys, context, "client")
        async with translated(context):
            return await self.service.status(caller, request.batch_id)

    async def CancelBatch(self, request, context):
        caller = await authenticate(self.keys, context, "client")
        async with translated(context):
            return await self.service.cancel(caller, request.batch_id)
