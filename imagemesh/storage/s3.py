"""S3-compatible object storage (AWS S3, Cloudflare R2, GCS interoperability, MinIO, SeaweedFS)
through obstore.

Why obstore: one small async API for put/get/list/delete that streams both ways (a put takes an
async iterator and becomes a multipart upload; a get is an async stream of chunks), presigned
URLs (`sign`, local HMAC, ~16 µs each here), its own retries with backoff, and a Rust core with
no botocore underneath (aiobotocore pins botocore to a narrow range, which is what makes
services that depend on both unresolvable).

Two signers: objects are read and written with `endpoint` (what the gateway reaches), while
URLs handed to workers and clients are signed for `public_endpoint` (what they reach; a SigV4
signature covers the host, so a URL can't be rewritten afterwards).

Credentials come from the settings, or else from the usual AWS_* environment variables.
Errors: obstore's not-found (NotFoundError or FileNotFoundError) → ObjectNotFound; anything else → StorageError (its message
never carries a URL, which may hold a signature).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from datetime import timedelta

import obstore
from obstore.exceptions import NotFoundError
from obstore.store import S3Store as _S3

from .base import CHUNK_BYTES, ObjectNotFound, ObjectTooLarge, StorageError, StoredObject, content_type_of
from .keys import check

PART_BYTES = 8 * 1024 * 1024


class S3Store:
    kind = "s3"

    def __init__(self, bucket: str, *, prefix: str = "", endpoint: str = "", public_endpoint: str = "",
                 region: str = "us-east-1", access_key_id: str = "", secret_access_key: str = "") -> None:
        if len(bucket) < 3:
            raise StorageError(f"bucket name {bucket!r}: at least 3 characters")
        self.bucket = bucket
        self._store = self._client(bucket, prefix, endpoint, region, access_key_id, secret_access_key)
        self._signer = (self._client(bucket, prefix, public_endpoint, region, access_key_id, secret_access_key)
                        if public_endpoint and public_endpoint != endpoint else self._store)

    @staticmethod
    def _client(bucket: str, prefix: str, endpoint: str, region: str, key_id: str, secret: str) -> _S3:
        config: dict = {"region": region}
        if endpoint:
            config["endpoint"] = endpoint
            config["virtual_hosted_style_request"] = False
        if key_id:
            config["access_key_id"] = key_id
            config["secret_access_key"] = secret
        return _S3(bucket, prefix=prefix or None, **config,
                   client_options={"allow_http": endpoint.startswith("http://"),
                                   "timeout": "60s", "connect_timeout": "5s"})

    async def put(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str = "",
                  max_bytes: int) -> int:
        check(key)
        size = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal size
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise ObjectTooLarge(max_bytes)
                yield chunk

        try:
            await obstore.put_async(self._store, key, counted(),
                                    attributes={"Content-Type": content_type or content_type_of(key)},
                                    chunk_size=PART_BYTES, max_concurrency=2)
        except ObjectTooLarge:
            raise
        except Exception as exc:
            if isinstance(exc.__cause__, ObjectTooLarge) or size > max_bytes:
                raise ObjectTooLarge(max_bytes) from None
            raise StorageError(f"S3 put failed: {type(exc).__name__}") from None
        return size

    async def put_many(self, items: Sequence[tuple[str, bytes, str]]) -> list[int | StorageError]:
        async def one(key: str, data: bytes, content_type: str) -> int | StorageError:
            try:
                await obstore.put_async(self._store, check(key), data,
                                        attributes={"Content-Type": content_type or content_type_of(key)})
                return len(data)
            except Exception as exc:
                return StorageError(f"S3 put failed: {type(exc).__name__}")
        return list(await asyncio.gather(*(one(*item) for item in items)))

    async def open(self, key: str, *, chunk_bytes: int = CHUNK_BYTES) -> StoredObject:
        try:
            result = await obstore.get_async(self._store, check(key))
        except (NotFoundError, FileNotFoundError):
            raise ObjectNotFound(key) from None
        except Exception as exc:
            raise StorageError(f"S3 get failed: {type(exc).__name__}") from None
        content_type = str(result.attributes.get("Content-Type") or content_type_of(key))
        stream = result.stream(min_chunk_size=chunk_bytes)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in stream:
                    yield bytes(chunk)
            except Exception as exc:
                raise StorageError(f"S3 read failed: {type(exc).__name__}") from None

        return StoredObject(size=int(result.meta["size"]), content_type=content_type, chunks=chunks())

    async def delete_prefix(self, prefix: str) -> None:
        keys = await self.keys(prefix)
        for start in range(0, len(keys), 1000):
            try:
                await obstore.delete_async(self._store, keys[start:start + 1000])
            except (NotFoundError, FileNotFoundError):
                pass
            except Exception as exc:
                raise StorageError(f"S3 delete failed: {type(exc).__name__}") from None

    async def keys(self, prefix: str) -> list[str]:
        try:
            found = await obstore.list(self._store, prefix=check(prefix) + "/").collect_async()
        except Exception as exc:
            raise StorageError(f"S3 list failed: {type(exc).__name__}") from None
        return sorted(meta["path"] for meta in found)

    def sign_get(self, keys: Sequence[str], ttl: float) -> list[str] | None:
        return self._sign("GET", keys, ttl)

    def sign_put(self, keys: Sequence[str], ttl: float) -> list[str] | None:
        return self._sign("PUT", keys, ttl)

    def _sign(self, method: str, keys: Sequence[str], ttl: float) -> list[str]:
        if not keys:
            return []
        try:
            return list(obstore.sign(self._signer, method, list(keys), timedelta(seconds=ttl)))  # type: ignore[arg-type]
        except Exception as exc:
            raise StorageError(f"S3 signing failed: {type(exc).__name__}") from None

    async def aclose(self) -> None:
        pass
