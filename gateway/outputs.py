"""Outputs and inputs in object storage, seen from the gateway: the only part of the gateway that
knows where image bytes go.

    assignment  ── prepare ──▶ upload targets (S3: presigned PUT; directory: a storage grant),
                               input sources (S3: presigned GET), the inline limit
    worker result ─ check ───▶ object references checked against the attempt's prefix (no I/O:
                               a result is judged the moment it arrives)
                  ─ count ───▶ bytes counted per tenant; the batch's objects expire with it
    batch events ── present ─▶ S3: each stored file gets a presigned GET signed now (the event
                               log holds only the reference, so a replay is always fresh); the
                               only events parsed on their way to a client
    DownloadFile ── download ▶ a stored object of the caller's own tenant, in chunks
    UploadInput ─── upload_input ▶ a large input stored before the task that names it
    submit ──────── over_quota ▶ the tenant's stored bytes against its quota

Nothing here puts bytes in Redis or in a frame of the worker stream. Workers never hold storage
credentials: S3 URLs are signed here, and the embedded store is written through the gateway's
`WorkerObjects` service under a grant (`gateway.grants`).

Keys (`imagemesh.storage.keys`) hold tenant, batch, task and **attempt**: attempts never write
one another's objects. The result names the winning attempt's objects; a losing attempt's
objects are not deleted at once, they go with the batch when its retention ends (the sweeper
in `gateway.retention` deletes the batch's whole prefix), and count against the tenant's
stored bytes until then.

With `storage_url=none` there is no store: assignments carry no targets and outputs travel
inline in results, each capped at `inline_max_bytes` (OUTPUT_TOO_LARGE past it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from imagemesh import filenames
from imagemesh.auth import Caller
from imagemesh.errors import InvalidInput
from imagemesh.storage import ObjectNotFound, ObjectStore, ObjectTooLarge, StoredObject
from imagemesh.storage import keys
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import worker_pb2 as wpb

from .batches import BatchStore, public_id
from .grants import Grant, Grants
from .retention import Retention
from .service import NotFound, Overloaded
from .validation import BadRequest

if TYPE_CHECKING:
    from .follower import Entry

log = logging.getLogger("imagemesh.gateway.outputs")

ENHANCE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}


class StorageDenied(Exception):
    """A worker's grant does not cover the object (forged, expired, another attempt's)."""


class StorageOff(Exception):
    """The call needs a store and this server has none (`storage_url=none`)."""


@dataclass(frozen=True)
class OutputSettings:
    # Presigned GET URLs in results work this long (they are signed again at each read).
    url_ttl: float = 3600.0
    max_output_bytes: int = 256 * 1024 * 1024
    inline_max_bytes: int = 1024 * 1024
    max_upload_bytes: int = 64 * 1024 * 1024
    # 0: no quota.
    max_stored_bytes_per_tenant: int = 0
    retention: float = 86400.0
    # How long an assignment's targets and grant stay valid (its longest run, and a margin).
    grant_ttl: float = 660.0
    sweep_interval: float = 30.0


class Outputs:
    def __init__(self, *, store: ObjectStore | None, batches: BatchStore, retention: Retention,
                 grants: Grants, settings: OutputSettings) -> None:
        self.store = store
        self.batches = batches
        self.retention = retention
        self.grants = grants
        self.s = settings
        self._tenants: OrderedDict[str, str] = OrderedDict()
        self._indexed: OrderedDict[str, None] = OrderedDict()
        self._sweeper: asyncio.Task | None = None

    @property
    def signs_urls(self) -> bool:
        return self.store is not None and self.store.kind == "s3"

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self.store is not None:
            self._sweeper = asyncio.create_task(self.retention.run(self.store, self.s.sweep_interval),
                                                name="storage-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(BaseException):
                await self._sweeper
        if self.store is not None:
            await self.store.aclose()

    # -- assignments ---------------------------------------------------------------------------
    async def prepare(self, msg: wpb.Assignment, tenant: str, batch_id: str, index: int, attempt: int,
                      task: pb.Task) -> None:
        """Fill the assignment's targets, sources, grant and inline limit. `batch_id` is the
        batch's ref (gateway.batches.batch_ref); objects are named by the tenant's own batch id,
        under the tenant's segment, as the tenant knows it.

        Raises InvalidInput for an `image_object` that is not one of the tenant's uploads (the
        task fails alone), RedisError while indexing the batch for retention."""
        then_enhance_first = msg.HasField("generate") and task.HasField("then_enhance")
        wants_inline = task.HasField("generate") and task.generate.inline_outputs
        if self.store is None:
            msg.inline_max_bytes = self.s.inline_max_bytes
            if msg.HasField("enhance") and msg.enhance.WhichOneof("source") == "image_object":
                raise InvalidInput("enhance.image_object: this server stores nothing (storage is off); "
                                   "send the image or an image_url")
            return
        if wants_inline and not then_enhance_first:  # a stage's outputs are its next stage's inputs
            msg.inline_max_bytes = self.s.inline_max_bytes
        prefix = keys.attempt_prefix(tenant, public_id(batch_id), index, attempt)
        objects = [keys.object_key(prefix, name) for name in self._planned_names(msg)]
        reads = self._reads(msg, tenant)
        await self._index(keys.batch_prefix(tenant, public_id(batch_id)))
        put_urls = self.store.sign_put(objects, self.s.grant_ttl)
        get_urls = self.store.sign_get([r for r in reads if r], self.s.grant_ttl)
        for i, obj in enumerate(objects):
            msg.uploads.add(object=obj, put_url=put_urls[i] if put_urls else "", max_bytes=self.s.max_output_bytes)
        signed = iter(get_urls or [])
        for obj in reads:
            msg.sources.add(object=obj, get_url=next(signed, "") if obj and get_urls else "")
        if self.store.kind == "directory":
            msg.storage_token = self.grants.issue(write_prefix=prefix, reads=[r for r in reads if r],
                                                  max_bytes=self.s.max_output_bytes, ttl=self.s.grant_ttl)

    @staticmethod
    def _planned_names(msg: wpb.Assignment) -> list[str]:
        """The filenames the worker will most likely give its outputs (it may change an
        extension to the real content type; the result's OutputFile.filename is the truth)."""
        if msg.HasField("generate"):
            count = max(1, msg.generate.num_outputs)
            name = msg.output_filename or "output"
            return [filenames.numbered(name, i, count) for i in range(count)]
        fmt = (msg.enhance.output_format or "png").lower()
        content_type = ENHANCE_TYPES.get(fmt, "image/png")
        return filenames.enhanced([f.filename for f in msg.inputs], msg.output_filename, content_type)

    @staticmethod
    def _reads(msg: wpb.Assignment, tenant: str) -> list[str]:
        """One object per input of a then_enhance stage ('' for an inline one), or the task's
        uploaded image; objects are only ever read from the batch's own tenant."""
        own = keys.tenant_segment(tenant) + "/"
        if len(msg.inputs):
            return [f.object if f.object.startswith(own) else "" for f in msg.inputs]
        if msg.HasField("enhance") and msg.enhance.WhichOneof("source") == "image_object":
            obj = msg.enhance.image_object
            if not obj.startswith(keys.tenant_inputs(tenant)):
                raise InvalidInput("enhance.image_object: not an input this caller uploaded "
                                   "(pass the `object` UploadInput returned)")
            return [obj]
        return []

    async def tenant_of(self, batch_id: str) -> str:
        """The batch's tenant (for queue entries written before entries carried it). Raises
        InvalidInput for a batch that is gone, RedisError."""
        tenant = self._tenants.get(batch_id)
        if tenant is None:
            meta = await self.batches.meta(batch_id)
            if meta is None:
                raise InvalidInput(f"batch {batch_id} is gone (expired)")
            tenant = self._tenants[batch_id] = meta.tenant
            while len(self._tenants) > 4096:
                self._tenants.popitem(last=False)
        return tenant

    async def _index(self, group: str) -> None:
        """Make sure the group will be swept even if no attempt of it ever reports (once per
        group per gateway process)."""
        if group in self._indexed:
            return
        await self.retention.hold([group], self.s.grant_ttl)
        self._indexed[group] = None
        while len(self._indexed) > 4096:
            self._indexed.popitem(last=False)

    # -- results -------------------------------------------------------------------------------
    def check(self, tenant: str, batch_id: str, index: int, attempt: int, r: wpb.AttemptResult) -> dict[str, int]:
        """Judge an attempt's result the moment it arrives (no I/O): a stored file outside its
        attempt's prefix fails the result (INTERNAL: a worker can't make a result point at
        someone else's object), and so do inline bytes over `inline_max_bytes` (OUTPUT_TOO_LARGE:
        they would go to Redis). Returns the bytes it stored, per batch group, for `count`."""
        inline = max((len(f.data) for f in r.files if f.WhichOneof("location") == "data"), default=0)
        if inline > self.s.inline_max_bytes:
            del r.files[:]
            r.state = pb.FAILED
            r.error.CopyFrom(pb.TaskError(code="OUTPUT_TOO_LARGE", message=(
                f"an inline output of {inline} bytes is over the limit of {self.s.inline_max_bytes}")))
            return {}
        stored = [f for f in r.files if f.object]
        if not stored:
            return {}
        prefix = keys.attempt_prefix(tenant, public_id(batch_id), index, attempt) + "/"
        if any(not f.object.startswith(prefix) for f in stored):
            del r.files[:]
            r.state = pb.FAILED
            r.error.CopyFrom(pb.TaskError(code="INTERNAL", message="the worker reported an output "
                                          "outside its attempt's storage prefix"))
            return {}
        group = keys.batch_prefix(tenant, public_id(batch_id))
        size = 0
        for f in stored:
            f.ClearField("url")  # the log keeps the reference; URLs are signed when read
            f.url_expires_at_ms = 0
            size += max(0, f.size_bytes)
        return {group: size}

    async def count(self, sizes: dict[str, int]) -> None:
        """Add stored bytes to their groups' (and tenants') totals. Best effort: on a Redis error
        the bytes are logged and not counted (the quota errs towards the tenant; the sweeper
        still deletes the objects with their batch)."""
        sizes = {g: n for g, n in sizes.items() if n}
        if not sizes:
            return
        try:
            await self.retention.record(sizes)
        except RedisError as exc:
            log.warning("could not count %d stored bytes against quotas (%s)", sum(sizes.values()),
                        type(exc).__name__)

    # -- reading -------------------------------------------------------------------------------
    def present(self, kind: bytes, wire: bytes) -> bytes:
        """A stored event (`gateway.follower.Entry`: its kind and serialized `BatchEvent`) as
        sent to a client. On S3, a result's stored files get presigned GET URLs signed now: only
        results are parsed, and only when this store signs URLs; every other event passes as
        it is."""
        if kind != b"result" or not self.signs_urls:
            return wire
        event = pb.BatchEvent.FromString(wire)
        stored = [f for f in event.result.files if f.object]
        if not stored:
            return wire
        urls = self.store.sign_get([f.object for f in stored], self.s.url_ttl)  # type: ignore[union-attr]
        expires = int((time.time() + self.s.url_ttl) * 1000)
        for f, url in zip(stored, urls or []):
            f.url = url
            f.url_expires_at_ms = expires
        return event.SerializeToString()

    async def presented(self, entries: AsyncIterable[Entry]) -> AsyncIterator[bytes]:
        async with contextlib.aclosing(entries) as events:  # type: ignore[type-var]
            async for entry in events:
                yield self.present(entry.kind, entry.wire)

    # -- files for callers ---------------------------------------------------------------------
    async def download(self, caller: Caller, batch_id: str, obj: str) -> StoredObject:
        """A stored object of the caller's tenant, named by one of its batches. Raises NotFound
        (another tenant's batch or object, expired, never stored: all look the same)."""
        missing = NotFound(f"file {obj!r} of batch {public_id(batch_id)!r} not found (unknown, expired, or not yours)")
        meta = await self.batches.meta(batch_id)
        if meta is None or (meta.tenant != caller.tenant and not caller.is_admin) or self.store is None:
            raise missing
        try:
            keys.check(obj)
        except keys.BadKey:
            raise missing from None
        if keys.tenant_of(obj) != keys.tenant_segment(meta.tenant):
            raise missing
        try:
            return await self.store.open(obj)
        except ObjectNotFound:
            raise missing from None

    async def upload_input(self, caller: Caller, header: pb.UploadInputHeader,
                           chunks: AsyncIterable[bytes]) -> pb.StoredInput:
        """Store an input for a later task. Raises StorageOff, Overloaded (quota), BadRequest
        (over `max_upload_bytes`), StorageError."""
        if self.store is None:
            raise StorageOff("this server stores nothing (storage is off): send the image in the task")
        full = await self.over_quota(caller.tenant)
        if full:
            raise Overloaded(full, retry_after=60.0)
        group = keys.inputs_prefix(caller.tenant, secrets.token_hex(8))
        key = keys.object_key(group, header.filename or "input")
        try:
            size = await self.store.put(key, chunks, content_type=header.content_type,
                                        max_bytes=self.s.max_upload_bytes)
        except ObjectTooLarge:
            raise BadRequest(f"the upload is over the limit of {self.s.max_upload_bytes} bytes") from None
        await self.retention.record({group: size})
        return pb.StoredInput(object=key, size_bytes=size)

    async def over_quota(self, tenant: str) -> str | None:
        """Why the tenant may store nothing more right now, or None."""
        limit = self.s.max_stored_bytes_per_tenant
        if self.store is None or limit <= 0:
            return None
        used = await self.retention.tenant_bytes(keys.tenant_segment(tenant))
        if used < limit:
            return None
        return (f"this caller's stored outputs and uploads hold {used} bytes, the quota is {limit}; "
                f"they are removed {self.s.retention:.0f}s after their batch finished")

    # -- files for workers (embedded store) -------------------------------------------------------
    def grant_for(self, token: str, obj: str, *, write: bool) -> Grant:
        """The grant behind a worker's token if it covers `obj`; raises StorageDenied, StorageOff."""
        if self.store is None:
            raise StorageOff("this server stores nothing (storage is off)")
        grant = self.grants.verify(token)
        try:
            keys.check(obj)
        except keys.BadKey:
            grant = None
        if grant is None or not (grant.may_write(obj) if write else grant.may_read(obj)):
            raise StorageDenied(f"the storage token does not allow {'writing' if write else 'reading'} "
                                "this object (expired, or another attempt's)")
        return grant

    async def put_for_worker(self, token: str, obj: str, content_type: str, chunks: AsyncIterable[bytes]) -> int:
        """Raises StorageDenied, StorageOff, ObjectTooLarge, StorageError."""
        grant = self.grant_for(token, obj, write=True)
        return await self.store.put(obj, chunks, content_type=content_type, max_bytes=grant.max_bytes)  # type: ignore[union-attr]

    async def put_small_for_worker(self, items: list[tuple[str, str, str, bytes]],
                                   max_bytes: int) -> list[int | Exception]:
        """Small objects (token, object, content type, data) written together; per object its
        size, or StorageDenied / StorageOff / ObjectTooLarge / StorageError for that one alone."""
        out: list[int | Exception | None] = []
        allowed = []
        for token, obj, content_type, data in items:
            try:
                grant = self.grant_for(token, obj, write=True)
                if len(data) > min(max_bytes, grant.max_bytes):
                    raise ObjectTooLarge(min(max_bytes, grant.max_bytes))
            except (StorageDenied, StorageOff, ObjectTooLarge) as exc:
                out.append(exc)
                continue
            out.append(None)
            allowed.append((obj, data, content_type))
        written = iter(await self.store.put_many(allowed) if allowed else [])  # type: ignore[union-attr]
        return [next(written) if r is None else r for r in out]

    async def open_for_worker(self, token: str, obj: str) -> StoredObject:
        """Raises StorageDenied, StorageOff, ObjectNotFound, StorageError."""
        self.grant_for(token, obj, write=False)
        return await self.store.open(obj)  # type: ignore[union-attr]


def build_outputs(s, redis, batches: BatchStore) -> Outputs:
    """`Outputs` from the gateway's settings (`gateway.settings.GatewaySettings`). Raises
    ValueError or StorageError naming a bad storage setting."""
    from imagemesh.storage import StorageConfig, open_store

    store = open_store(StorageConfig(url=s.storage_url, endpoint=s.storage_endpoint,
                                     public_endpoint=s.storage_public_endpoint, region=s.storage_region,
                                     access_key_id=s.storage_access_key_id,
                                     secret_access_key=s.storage_secret_access_key))
    return Outputs(store=store, batches=batches, grants=Grants(s.secret_key),
                   retention=Retention(redis, prefix=s.redis_prefix, retention=s.retention),
                   settings=OutputSettings(url_ttl=s.storage_url_ttl, max_output_bytes=s.max_output_bytes,
                                           inline_max_bytes=s.inline_max_bytes, max_upload_bytes=s.max_upload_bytes,
                                           max_stored_bytes_per_tenant=s.max_stored_bytes_per_tenant,
                                           retention=s.retention, grant_ttl=s.max_job_runtime + 60.0,
                                           sweep_interval=s.sweep_interval))
