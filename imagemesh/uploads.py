"""The worker side of storage: write an attempt's outputs where its assignment says, and read the
stored inputs it names, always as streams and never past a size limit.

    writer = ObjectLink(http=client, api_key=key)            # one per worker process
    writer.channel = lambda: runtime.channel                  # the gateway connection, once known
    f = await writer.output(assignment, i, Body.of(data), "image/png", "fox.png")
    data = await writer.input(assignment, i, max_bytes)       # a then_enhance input, an upload

Where output `i` goes (`Assignment.uploads[i]`, see worker.proto):

- `put_url` set (S3): an HTTP PUT of the body to the presigned URL, with Content-Length. A body
  of known length is streamed straight through; one of unknown length is spooled to a
  temporary file first (memory holds one chunk), because S3 refuses a PUT without a length;
- otherwise (the embedded store): through the gateway's `WorkerObjects` service on the gateway
  connection, with the assignment's `storage_token`, beside the `Connect` stream (its bytes
  never ride a control frame): a small object (up to SMALL_OBJECT_BYTES) whole, batched with
  others on one long-lived `PutSmallObjects` stream (a call per object would cost more CPU than
  the write: ~1.3 ms against ~0.1 ms here); a larger one on a `PutObject` call of its own, in
  chunks;
- inline (`OutputFile.data`): when the body fits `inline_max_bytes` and the caller asked for it,
  or when the assignment has no targets at all (storage is off).

Every body is counted while it streams: past the target's `max_bytes` (or the inline limit when
nothing can be stored) the write stops and raises `OutputTooLarge`, which fails this task alone.

Errors: OutputTooLarge; Unavailable (the store or the gateway could not be reached, or
refused: retryable); InvalidInput (a stored input is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc
import httpx

from imagemesh.errors import Internal, InvalidInput, OutputTooLarge, Unavailable
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import worker_pb2 as wpb
from imagemesh.v1 import worker_pb2_grpc as wpb_grpc

CHUNK_BYTES = 256 * 1024
# Inline limit when an assignment names neither targets nor a limit (an older gateway, tests).
DEFAULT_INLINE_MAX = 16 * 1024 * 1024
SPOOL_IN_MEMORY = 1024 * 1024
SMALL_OBJECT_BYTES = 256 * 1024
SMALL_FRAME_BYTES = 1024 * 1024
# Room for a message's own fields around its bytes (object key, token, content type).
MESSAGE_MARGIN = 16 * 1024


@dataclass
class Body:
    """An output's bytes as chunks; `length` when known in advance."""

    chunks: AsyncIterator[bytes]
    length: int | None = None

    @classmethod
    def of(cls, data: bytes) -> "Body":
        async def one() -> AsyncIterator[bytes]:
            for start in range(0, len(data), CHUNK_BYTES):
                yield data[start:start + CHUNK_BYTES]
        return cls(one(), len(data))


async def _capped(chunks: AsyncIterator[bytes], limit: int, what: str) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise OutputTooLarge(f"{what} is over the limit of {limit} bytes")
        yield chunk


async def _rechunked(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """The same bytes in pieces of at most `size` (a provider's stream may hand over more)."""
    async for chunk in chunks:
        for start in range(0, len(chunk), size):
            yield chunk[start:start + size]


async def _prefixed(head: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in head:
        yield chunk
    async for chunk in rest:
        yield chunk


class SmallObjectStream:
    """One `PutSmallObjects` call on a channel: objects given to `put` leave together (up to
    SMALL_FRAME_BYTES a message), and each `put` returns when its receipt comes back. When the
    stream breaks, every object still waiting fails with Unavailable and the stream is `broken`
    (the next put opens another)."""

    def __init__(self, channel: grpc.aio.Channel, metadata, frame_bytes: int = SMALL_FRAME_BYTES) -> None:
        self.channel = channel
        self.frame_bytes = frame_bytes
        self.broken = False
        self._pending: deque[tuple[wpb.SmallObject, asyncio.Future]] = deque()
        self._waiting: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._ready = asyncio.Event()
        self._call = wpb_grpc.WorkerObjectsStub(channel).PutSmallObjects(metadata=metadata)
        self._tasks = [asyncio.create_task(self._write()), asyncio.create_task(self._read())]

    async def put(self, obj: str, token: str, content_type: str, data: bytes) -> wpb.ObjectReceipt:
        if self.broken:
            raise Unavailable("the object stream to the gateway broke")
        future = asyncio.get_running_loop().create_future()
        msg = wpb.SmallObject(id=next(self._ids), object=obj, token=token, content_type=content_type, data=data)
        self._pending.append((msg, future))
        self._ready.set()
        return await future

    async def _write(self) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._pending:
                    batch: list[wpb.SmallObject] = []
                    size = 0
                    while self._pending and (not batch or size + len(self._pending[0][0].data) <= self.frame_bytes):
                        msg, future = self._pending.popleft()
                        if future.done():  # its attempt was cancelled meanwhile
                            continue
                        self._waiting[msg.id] = future
                        batch.append(msg)
                        size += len(msg.data)
                    if batch:
                        await self._call.write(wpb.PutSmallObjectsRequest(objects=batch))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)

    async def _read(self) -> None:
        try:
            async for reply in self._call:
                for receipt in reply.receipts:
                    future = self._waiting.pop(receipt.id, None)
                    if future is not None and not future.done():
                        future.set_result(receipt)
            self._fail(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException | None) -> None:
        self.broken = True
        why = type(exc).__name__ if exc is not None else "closed"
        for future in [f for _, f in self._pending] + list(self._waiting.values()):
            if not future.done():
                future.set_exception(Unavailable(f"the object stream to the gateway broke ({why})"))
        self._pending.clear()
        self._waiting.clear()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._call.cancel()

    async def aclose(self) -> None:
        self._fail(None)
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task


class ObjectLink:
    """`http`: the client (or clients, used in turn) for presigned URLs. Several small pools
    beat one large one when many uploads run at once: httpcore's pool costs CPU that grows with
    the square of its connections (see gen_worker.providers.http). `max_message_bytes`: the
    gateway's message limit; every message to the embedded store stays below it."""

    def __init__(self, *, http: httpx.AsyncClient | Sequence[httpx.AsyncClient], api_key: str,
                 channel: Callable[[], grpc.aio.Channel | None] | None = None,
                 max_message_bytes: int = 16 * 1024 * 1024) -> None:
        room = max(4096, max_message_bytes - MESSAGE_MARGIN)
        self.chunk_bytes = min(CHUNK_BYTES, room)
        self.small_object_bytes = min(SMALL_OBJECT_BYTES, room)
        self.small_frame_bytes = min(SMALL_FRAME_BYTES, room)
        clients = [http] if isinstance(http, httpx.AsyncClient) else list(http)
        self.http = clients[0]
        self._clients = itertools.cycle(clients)
        self.channel = channel or (lambda: None)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._small: SmallObjectStream | None = None

    # -- outputs -------------------------------------------------------------------------------
    async def output(self, a: wpb.Assignment, index: int, body: Body, content_type: str,
                     filename: str) -> pb.OutputFile:
        """Write output `index` of the attempt; returns its OutputFile (object or data, size).
        Raises OutputTooLarge, Unavailable."""
        what = f"output {index + 1} ({filename})"
        target = a.uploads[index] if index < len(a.uploads) else None
        if target is None and len(a.uploads):
            raise Internal(f"{what}: the attempt produced more outputs than it was given targets "
                           f"({len(a.uploads)})")
        inline_max = a.inline_max_bytes if (a.inline_max_bytes or target) else DEFAULT_INLINE_MAX
        f = pb.OutputFile(filename=filename, content_type=content_type)
        if target is None:
            f.data = b"".join([c async for c in _capped(body.chunks, inline_max, what)])
            f.size_bytes = len(f.data)
            return f
        if body.length is not None and body.length > target.max_bytes:
            raise OutputTooLarge(f"{what} is {body.length} bytes, over the limit of {target.max_bytes}")
        chunks = _capped(body.chunks, target.max_bytes, what)
        # Read a small body whole: it may go inline, or as a small object.
        head_max = inline_max if target.put_url else max(inline_max, min(self.small_object_bytes, target.max_bytes))
        if head_max and (body.length is None or body.length <= head_max):
            head, size = [], 0
            async for chunk in chunks:
                head.append(chunk)
                size += len(chunk)
                if size > head_max:
                    break
            else:
                data = b"".join(head)
                f.size_bytes = size
                if size <= inline_max:
                    f.data = data
                    return f
                if not target.put_url and size <= self.small_object_bytes:
                    await self._put_small(a.storage_token, target.object, data, content_type, what)
                    f.object = target.object
                    return f
            chunks = _prefixed(head, chunks)
        if target.put_url:
            f.size_bytes = await self._put_url(target.put_url, chunks, body.length, content_type, what)
        else:
            f.size_bytes = await self._put_object(a.storage_token, target.object, chunks, content_type, what)
        f.object = target.object
        return f

    async def _put_url(self, url: str, chunks: AsyncIterator[bytes], length: int | None,
                       content_type: str, what: str) -> int:
        spool = None
        if length is None:  # S3 needs the length up front: spool to disk, one chunk in memory
            spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
            length = 0
            async for chunk in chunks:
                await asyncio.to_thread(spool.write, chunk)
                length += len(chunk)
            spool.seek(0)
            chunks = self._unspool(spool)
        sent = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal sent
            async for chunk in chunks:
                sent += len(chunk)
                yield chunk

        try:
            response = await next(self._clients).put(url, content=counted(), timeout=httpx.Timeout(60.0, connect=10.0),
                                           headers={"Content-Type": content_type or "application/octet-stream",
                                                    "Content-Length": str(length)})
        except httpx.TransportError as exc:
            raise Unavailable(f"{what}: the object store could not be reached ({type(exc).__name__})") from None
        finally:
            if spool is not None:
                spool.close()
        if response.status_code >= 300:
            raise Unavailable(f"{what}: the object store refused the upload (HTTP {response.status_code})")
        if sent != length:
            raise Unavailable(f"{what}: the body ended after {sent} of {length} bytes")
        return sent

    @staticmethod
    async def _unspool(spool) -> AsyncIterator[bytes]:
        while True:
            chunk = await asyncio.to_thread(spool.read, CHUNK_BYTES)
            if not chunk:
                return
            yield chunk

    def _stub(self, what: str) -> wpb_grpc.WorkerObjectsStub:
        channel = self.channel()
        if channel is None:
            raise Unavailable(f"{what}: not connected to a gateway")
        return wpb_grpc.WorkerObjectsStub(channel)

    async def _put_small(self, token: str, obj: str, data: bytes, content_type: str, what: str) -> None:
        channel = self.channel()
        if channel is None:
            raise Unavailable(f"{what}: not connected to a gateway")
        if self._small is None or self._small.broken or self._small.channel is not channel:
            if self._small is not None:
                await self._small.aclose()
            self._small = SmallObjectStream(channel, self._metadata, self.small_frame_bytes)
        receipt = await self._small.put(obj, token, content_type, data)
        if receipt.error_code:
            raise self._refused(receipt.error_code, receipt.error, what)

    async def aclose(self) -> None:
        if self._small is not None:
            await self._small.aclose()

    async def _put_object(self, token: str, obj: str, chunks: AsyncIterator[bytes], content_type: str,
                          what: str) -> int:
        call = self._stub(what).PutObject(metadata=self._metadata)
        try:
            await call.write(wpb.PutObjectRequest(header=wpb.PutObjectHeader(
                object=obj, token=token, content_type=content_type)))
            async for chunk in _rechunked(chunks, self.chunk_bytes):
                await call.write(wpb.PutObjectRequest(data=chunk))
            await call.done_writing()
            reply = await call
        except grpc.aio.AioRpcError as exc:
            raise self._failure(exc, what) from None
        except BaseException:
            call.cancel()  # an oversized or failed body: the gateway discards the partial object
            raise
        return reply.size_bytes

    @staticmethod
    def _failure(exc: grpc.aio.AioRpcError, what: str) -> Exception:
        return ObjectLink._refused(exc.code().name, exc.details() or "", what)

    @staticmethod
    def _refused(code: str, details: str, what: str) -> Exception:
        if code == "RESOURCE_EXHAUSTED":
            return OutputTooLarge(f"{what}: {details}")
        if code == "NOT_FOUND":
            return InvalidInput(f"{what}: the stored object is gone (expired?)")
        if code in ("PERMISSION_DENIED", "FAILED_PRECONDITION", "INVALID_ARGUMENT"):
            return Internal(f"{what}: the gateway refused the transfer: {details}")
        return Unavailable(f"{what}: the gateway's object store failed ({code})")

    # -- inputs --------------------------------------------------------------------------------
    async def input(self, a: wpb.Assignment, index: int, max_bytes: int) -> bytes:
        """The bytes of stored input `index` (`Assignment.sources`). Raises InvalidInput (gone,
        too large), Unavailable."""
        source = a.sources[index]
        what = f"input {index + 1}"
        if source.get_url:
            return await self._get_url(source.get_url, max_bytes, what)
        parts, size = [], 0
        try:
            async for msg in self._stub(what).GetObject(
                    wpb.GetObjectRequest(object=source.object, token=a.storage_token), metadata=self._metadata):
                size += len(msg.data)
                if size > max_bytes or msg.size_bytes > max_bytes:
                    raise InvalidInput(f"{what} is over the limit of {max_bytes} bytes")
                parts.append(msg.data)
        except grpc.aio.AioRpcError as exc:
            raise self._failure(exc, what) from None
        return b"".join(parts)

    async def _get_url(self, url: str, max_bytes: int, what: str) -> bytes:
        # A URL the gateway signed for its own store: trusted (no public-address rule).
        try:
            async with next(self._clients).stream("GET", url, timeout=httpx.Timeout(60.0, connect=10.0)) as response:
                if response.status_code in (403, 404):
                    raise InvalidInput(f"{what}: the stored object is gone (expired?)")
                if response.status_code >= 300:
                    raise Unavailable(f"{what}: the object store answered HTTP {response.status_code}")
                parts, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise InvalidInput(f"{what} is over the limit of {max_bytes} bytes")
                    parts.append(chunk)
                return b"".join(parts)
        except httpx.TransportError as exc:
            raise Unavailable(f"{what}: the object store could not be reached ({type(exc).__name__})") from None
