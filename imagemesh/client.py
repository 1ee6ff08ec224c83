"""`imagemesh.Client`: the async Python client for internal services.

    async with Client("gateway:50051", api_key) as client:
        async for event in client.submit([generate("a red fox", "fox.png")]):
            if event.HasField("result"):
                ...

Each event is yielded exactly once, in log order, even across broken streams: the client picks
the batch id itself (so a resubmission after a failure before `accepted` is the same batch, and
nothing runs twice), remembers the cursor of the last event it yielded, and when a stream
breaks it re-attaches with `WatchBatch(batch_id, after_cursor)` on whichever gateway answers,
with exponential backoff, up to `reattach_attempts` times.

Transport: `tls=None` (the default) takes TLS from the environment (`IMAGEMESH_TLS_CA`, and
`IMAGEMESH_TLS_CERT` / `IMAGEMESH_TLS_KEY` for mutual TLS, `IMAGEMESH_TLS_SERVER_NAME`), plaintext
when none is set; `tls=True` verifies the gateway against the system's CA certificates;
`tls=ChannelTls(ca=..., cert=..., key=...)` says it all explicitly; `tls=False` is plaintext.
A gateway that requires TLS refuses a plaintext client (UNAVAILABLE: the connection is closed).

Files: results carry stored outputs as references (`OutputFile.object`, and on S3 a fresh
presigned `url`); `download(batch_id, object)` streams one through the gateway, whatever the
backend (`imagemesh.downloads` saves whole batches). Enhance images larger than
`upload_threshold` are uploaded first (`upload_input`) and submitted by reference, so large
inputs never ride in the request or the task queue. A gateway that stores nothing keeps them
inline; a request that then passes `max_message_bytes` raises RequestTooLarge before it is sent.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from google.protobuf import struct_pb2

from imagemesh import tracing
from imagemesh.tls import ChannelTls, channel
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import imagemesh_pb2_grpc as pb_grpc

UPLOAD_THRESHOLD = 256 * 1024
UPLOAD_CHUNK = 1024 * 1024

class RequestTooLarge(ValueError):
    """A request that can't be sent: it is over the channel's message limit even after large
    images were uploaded (the gateway stores nothing, so they stay inline). Sending it would
    only end in RESOURCE_EXHAUSTED from gRPC itself, which no retry cures."""


RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
             grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}


def generate(prompt: str, output_filename: str = "", *, model: str = "", providers: Iterable[str] = (),
             num_outputs: int = 1, race: bool = False, inline_outputs: bool = False,
             labels: dict[str, str] | None = None, then_enhance: pb.EnhanceSpec | None = None,
             **inputs: Any) -> pb.Task:
    """A generate task; keyword arguments become the model's `input`."""
    task = pb.Task(output_filename=output_filename, labels=labels or {},
                   generate=pb.GenerateSpec(prompt=prompt, model=model, providers=list(providers),
                                            num_outputs=num_outputs, race=race, inline_outputs=inline_outputs))
    if inputs:
        task.generate.input.update(inputs)
    if then_enhance is not None:
        task.then_enhance.CopyFrom(then_enhance)
    return task


def enhance(image: bytes | str | pb.StoredInput, output_filename: str = "", *, upscale: int = 2,
            restore_faces: bool = True, fidelity: float = 0.5, only_center_face: bool = False,
            output_format: str = "png", labels: dict[str, str] | None = None) -> pb.Task:
    """An enhance task from image bytes, an http(s) URL, or an input uploaded with
    `Client.upload_input`."""
    spec = pb.EnhanceSpec(upscale=upscale, restore_faces=restore_faces, fidelity=fidelity,
                          only_center_face=only_center_face, output_format=output_format)
    if isinstance(image, bytes):
        spec.image = image
    elif isinstance(image, pb.StoredInput):
        spec.image_object = image.object
    else:
        spec.image_url = image
    return pb.Task(output_filename=output_filename, labels=labels or {}, enhance=spec)


def new_batch_id() -> str:
    return "b" + secrets.token_hex(8)


def cursor_key(cursor: str) -> tuple[int, int]:
    ms, _, seq = cursor.partition("-")
    return int(ms), int(seq or 0)


class Client:
    def __init__(self, target: str, api_key: str, *, reattach_attempts: int = 20,
                 max_message_bytes: int = 16 * 1024 * 1024, tls: ChannelTls | bool | None = None,
                 upload_threshold: int = UPLOAD_THRESHOLD) -> None:
        """`tls`: see the module docstring. Raises imagemesh.tls.TlsConfigError when a
        certificate file can't be read."""
        self.target = target
        self.reattach_attempts = reattach_attempts
        self.upload_threshold = upload_threshold
        self.max_message_bytes = max_message_bytes
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        if tls is None:
            tls = ChannelTls.from_environment()
        elif tls is True:
            tls = ChannelTls()
        self.tls = tls or None
        self._channel = channel(target, self.tls, [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
        ])
        self.api = pb_grpc.ImageMeshStub(self._channel)
        self.admin = pb_grpc.MeshAdminStub(self._channel)

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._channel.close()

    # -- batches -------------------------------------------------------------------------------
    def submit(self, tasks: Iterable[pb.Task], *, credentials: dict[str, str] | None = None,
               batch_id: str | None = None, priority: int = 0) -> AsyncIterator[pb.BatchEvent]:
        """Submit a batch and yield its events: `accepted`, each `result` as it finishes, `summary`."""
        request = pb.SubmitBatchRequest(tasks=list(tasks), credentials=credentials or {},
                                        batch_id=batch_id or new_batch_id(), priority=priority)
        return self._submit(request)

    async def _submit(self, request: pb.SubmitBatchRequest) -> AsyncIterator[pb.BatchEvent]:
        await self._upload_large_images(request.tasks)
        self._check_size(request, f"batch of {len(request.tasks)} tasks")
        # With OpenTelemetry configured, the batch's trace starts here and crosses the mesh.
        span = tracing.start("imagemesh.client.submit", kind="client", batch_id=request.batch_id,
                             tasks=len(request.tasks))
        metadata = self._metadata + tuple(tracing.inject(span).items())
        async for event in tracing.ended_after(span, self._follow(
                request.batch_id, lambda: self.api.SubmitBatch(request, metadata=metadata))):
            yield event

    async def _upload_large_images(self, tasks) -> None:
        """Replace each enhance image over `upload_threshold` by an uploaded reference (kept
        inline when the server stores nothing)."""
        for task in tasks:
            spec = task.enhance
            if task.HasField("enhance") and spec.WhichOneof("source") == "image" and len(spec.image) > self.upload_threshold:
                try:
                    stored = await self.upload_input(spec.image, task.output_filename or "input")
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                        return
                    raise
                spec.image_object = stored.object

    def _check_size(self, request, what: str) -> None:
        """Raise RequestTooLarge, naming the size and the limit, before a doomed send."""
        size = request.ByteSize()
        if size > self.max_message_bytes:
            raise RequestTooLarge(
                f"the {what} is {size} bytes, over the message limit of {self.max_message_bytes} bytes "
                "(max_message_bytes): the gateway stores no uploads, so enhance images travel inside the "
                "request; send fewer or smaller images per request, or run the gateway with storage")

    # -- files ---------------------------------------------------------------------------------
    async def upload_input(self, data: bytes, filename: str = "input", content_type: str = "") -> pb.StoredInput:
        """Store an input (an image to enhance) on the server; pass the result to `enhance`."""
        def parts():
            yield pb.UploadInputRequest(header=pb.UploadInputHeader(filename=filename, content_type=content_type))
            for start in range(0, len(data), UPLOAD_CHUNK):
                yield pb.UploadInputRequest(data=data[start:start + UPLOAD_CHUNK])
        return await self.api.UploadInput(parts(), metadata=self._metadata)

    def download(self, batch_id: str, obj: str) -> AsyncIterator[pb.FileChunk]:
        """The chunks of a stored output (`OutputFile.object`) of one of your batches; the first
        carries its size, content type and filename."""
        return self.api.DownloadFile(pb.DownloadFileRequest(batch_id=batch_id, object=obj), metadata=self._metadata)

    def watch(self, batch_id: str, after_cursor: str = "") -> AsyncIterator[pb.BatchEvent]:
        """Every event of a batch after `after_cursor` (all if empty), then new ones until the summary."""
        return self._follow(batch_id, None, after_cursor)

    async def _follow(self, batch_id: str, first_call: Callable[[], Any] | None,
                      cursor: str = "") -> AsyncIterator[pb.BatchEvent]:
        failures = 0
        while True:
            if first_call is not None and not cursor:
                call = first_call()  # nothing seen yet: (re)submit; the batch id makes it idempotent
            else:
                call = self.api.WatchBatch(pb.WatchBatchRequest(batch_id=batch_id, after_cursor=cursor),
                                           metadata=self._metadata)
            try:
                async for event in call:
                    if cursor and event.cursor and cursor_key(event.cursor) <= cursor_key(cursor):
                        continue
                    cursor = event.cursor or cursor
                    failures = 0
                    yield event
                    if event.HasField("summary"):
                        return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or failures >= self.reattach_attempts:
                    raise
            failures += 1
            if failures > self.reattach_attempts:
                raise ConnectionError(f"batch {batch_id}: the stream kept ending before the summary")
            await asyncio.sleep(min(5.0, 0.1 * 2 ** failures) * (0.5 + random.random()))

    async def status(self, batch_id: str) -> pb.BatchStatus:
        return await self.api.GetBatch(pb.GetBatchRequest(batch_id=batch_id), metadata=self._metadata)

    async def cancel(self, batch_id: str) -> pb.BatchStatus:
        return await self.api.CancelBatch(pb.CancelBatchRequest(batch_id=batch_id), metadata=self._metadata)

    def session(self, *, credentials: dict[str, str] | None = None, batch_id: str | None = None,
                keep_running_on_disconnect: bool = False) -> "Session":
        """An open `Stream` session: add tasks as you have them, read events as they come."""
        return Session(self, pb.StreamOpen(credentials=credentials or {}, batch_id=batch_id or new_batch_id(),
                                           keep_running_on_disconnect=keep_running_on_disconnect))

    # -- admin ---------------------------------------------------------------------------------
    async def keys(self) -> pb.ListKeysResponse:
        return await self.admin.ListKeys(pb.ListKeysRequest(), metadata=self._metadata)

    async def set_key_limit(self, key: str, limit: int) -> pb.KeyInfo:
        return await self.admin.SetKeyLimit(pb.SetKeyLimitRequest(key=key, limit=limit), metadata=self._metadata)

    async def workers(self) -> pb.ListWorkersResponse:
        return await self.admin.ListWorkers(pb.ListWorkersRequest(), metadata=self._metadata)

    async def providers(self) -> pb.ListProvidersResponse:
        return await self.admin.ListProviders(pb.ListProvidersRequest(), metadata=self._metadata)


class Session:
    """A `Stream` call: `await add(task)`, `await close()`, `async for event in events()`."""

    def __init__(self, client: Client, open_msg: pb.StreamOpen) -> None:
        self._client = client
        self.batch_id = open_msg.batch_id
        self._queue: asyncio.Queue[pb.StreamRequest | None] = asyncio.Queue(maxsize=1024)
        self._queue.put_nowait(pb.StreamRequest(open=open_msg))
        self._call = client.api.Stream(self._requests(), metadata=client._metadata)

    async def _requests(self):
        while True:
            msg = await self._queue.get()
            if msg is None:
                return
            yield msg

    async def add(self, task: pb.Task) -> None:
        """Send a task (a large enhance image is uploaded first, as `Client.submit` does)."""
        request = pb.StreamRequest(task=task)
        await self._client._upload_large_images([request.task])
        self._client._check_size(request, "task")
        await self._queue.put(request)

    async def close(self) -> None:
        await self._queue.put(pb.StreamRequest(close=pb.StreamClose()))
        await self._queue.put(None)

    async def events(self) -> AsyncIterator[pb.BatchEvent]:
        async for event in self._call:
            yield event

    def abort(self) -> None:
        """Go away without `close` (what a crashed client does)."""
        self._call.cancel()


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s
