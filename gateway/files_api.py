"""gRPC faces of `gateway.outputs`: they translate, `Outputs` decides.

`FileTransfer` holds the public API's file calls (`ImageMesh.DownloadFile`, `UploadInput`) and
is mixed into `ImageMeshServicer`; `WorkerObjectsServicer` is the embedded store's service for
workers (`PutObject`, `GetObject`, and `PutSmallObjects`, one long-lived stream per worker for
objects of at most SMALL_OBJECT_BYTES), separate from their `Connect` stream so that image
bytes never travel in its frames.

Status codes: NOT_FOUND (another tenant's file, expired, never stored), INVALID_ARGUMENT (no
header first, a header twice, over the upload limit), PERMISSION_DENIED (a worker's grant does
not cover the object), RESOURCE_EXHAUSTED (tenant's storage quota; an object over the grant's
limit), FAILED_PRECONDITION (storage is off), UNAVAILABLE (the store or Redis failed; retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator

import grpc
from redis.exceptions import RedisError

from imagemesh.storage import ObjectNotFound, ObjectTooLarge, StorageError, StoredObject
from imagemesh.storage.keys import filename_of
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import worker_pb2 as wpb
from imagemesh.v1 import worker_pb2_grpc as wpb_grpc

from . import api  # api mixes FileTransfer in: use its helpers at call time, not import time
from .interceptors import current_caller
from .outputs import Outputs, StorageDenied, StorageOff

SMALL_OBJECT_BYTES = 256 * 1024
# Objects written in one trip to the store, and objects one worker may have waiting at most.
SMALL_GROUP = 256
MAX_PENDING_SMALL = 16384

log = logging.getLogger("imagemesh.gateway.files")


async def _body(requests, context, what: str) -> AsyncIterator[bytes]:
    """The data parts after the header; a second header is a protocol error."""
    async for msg in requests:
        if msg.WhichOneof("part") != "data":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: only the first message may be the header")
        yield msg.data


async def _storage_failed(context, exc: Exception) -> None:
    log.warning("storage call failed: %s", exc)
    await context.abort(grpc.StatusCode.UNAVAILABLE, "the object store is unavailable; retry")


class FileTransfer:
    """ImageMesh.DownloadFile and ImageMesh.UploadInput; needs `self.service.outputs`. Callers are
    authenticated by `interceptors.Authenticator` (role client) before a message is read."""

    async def DownloadFile(self, request, context):
        caller = current_caller()
        outputs: Outputs = self.service.outputs
        try:
            async with api.translated(context):
                obj = await outputs.download(caller, self.service.ref(caller, request.batch_id), request.object)
            first = True
            async for chunk in obj.chunks:
                if first:
                    yield pb.FileChunk(data=chunk, size_bytes=obj.size, content_type=obj.content_type,
                                       filename=filename_of(request.object))
                    first = False
                else:
                    yield pb.FileChunk(data=chunk)
            if first:  # an empty object still says what it is
                yield pb.FileChunk(size_bytes=0, content_type=obj.content_type, filename=filename_of(request.object))
        except StorageError as exc:
            await _storage_failed(context, exc)

    async def UploadInput(self, request_iterator, context):
        caller = current_caller()
        outputs: Outputs = self.service.outputs
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "UploadInput: the first message must be the header")
        try:
            async with api.translated(context):
                return await outputs.upload_input(caller, first.header, _body(request_iterator, context, "UploadInput"))
        except StorageOff as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except StorageError as exc:
            await _storage_failed(context, exc)


class WorkerObjectsServicer(wpb_grpc.WorkerObjectsServicer):
    def __init__(self, outputs: Outputs) -> None:
        self.outputs = outputs

    async def PutObject(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "PutObject: the first message must be the header")
        h = first.header
        try:
            size = await self.outputs.put_for_worker(h.token, h.object, h.content_type,
                                                     _body(request_iterator, context, "PutObject"))
        except StorageDenied as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except StorageOff as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except ObjectTooLarge as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"PutObject: {exc}")
        except StorageError as exc:
            await _storage_failed(context, exc)
        return wpb.PutObjectReply(object=h.object, size_bytes=size)

    async def PutSmallObjects(self, request_iterator, context):
        """Objects stored as they come, each answered with a receipt; a refused object fails
        alone (its receipt says why), the stream goes on. Objects that arrive while a group is
        being written form the next group: one trip to the store serves all of them, so the
        rate follows the load instead of one trip per message."""
        pending: deque = deque()
        arrived = asyncio.Event()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    pending.extend(request.objects)
                    arrived.set()
                    if len(pending) > MAX_PENDING_SMALL:
                        raise ObjectTooLarge(MAX_PENDING_SMALL)  # a worker that never waits for receipts
            finally:
                arrived.set()

        reader = asyncio.create_task(read())
        try:
            while True:
                await arrived.wait()
                arrived.clear()
                if not pending:
                    if reader.done():
                        break
                    continue
                group = [pending.popleft() for _ in range(min(len(pending), SMALL_GROUP))]
                if pending:
                    arrived.set()
                done = await self.outputs.put_small_for_worker(
                    [(o.token, o.object, o.content_type, o.data) for o in group], SMALL_OBJECT_BYTES)
                yield wpb.PutSmallObjectsReply(receipts=self._receipts(group, done))
            if reader.exception() is not None and isinstance(reader.exception(), ObjectTooLarge):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"PutSmallObjects: more than {MAX_PENDING_SMALL} objects waiting")
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    @staticmethod
    def _receipts(group, done) -> list[wpb.ObjectReceipt]:
        receipts = []
        for o, outcome in zip(group, done):
            receipt = wpb.ObjectReceipt(id=o.id)
            if isinstance(outcome, int):
                receipt.size_bytes = outcome
            elif isinstance(outcome, StorageDenied):
                receipt.error_code, receipt.error = "PERMISSION_DENIED", str(outcome)
            elif isinstance(outcome, StorageOff):
                receipt.error_code, receipt.error = "FAILED_PRECONDITION", str(outcome)
            elif isinstance(outcome, ObjectTooLarge):
                receipt.error_code, receipt.error = "RESOURCE_EXHAUSTED", f"PutSmallObjects: {outcome}"
            else:
                log.warning("storage call failed: %s", outcome)
                receipt.error_code, receipt.error = "UNAVAILABLE", "the object store is unavailable; retry"
            receipts.append(receipt)
        return receipts

    async def GetObject(self, request, context):
        try:
            obj: StoredObject = await self.outputs.open_for_worker(request.token, request.object)
            first = True
            async for chunk in obj.chunks:
                yield wpb.ObjectData(data=chunk, size_bytes=obj.size if first else 0)
                first = False
        except StorageDenied as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except StorageOff as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except ObjectNotFound:
            await context.abort(grpc.StatusCode.NOT_FOUND, "GetObject: no such object (expired?)")
        except (StorageError, RedisError) as exc:
            await _storage_failed(context, exc)
