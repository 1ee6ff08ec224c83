"""The one small interface every storage backend has, and its errors.

    store.put(key, chunks, content_type=..., max_bytes=N) -> size     streams in, never whole
    store.put_many([(key, data, content_type)...]) -> [size | error]  small objects, in one go
    store.open(key) -> StoredObject(size, content_type, chunks)       streams out
    store.delete_prefix(prefix)                                       a batch's objects, at expiry
    store.keys(prefix)                                                what is there (sweeps, tests)
    store.sign_get(keys, ttl) / sign_put(keys, ttl)                   presigned URLs, or None when
                                                                      the backend has none
Errors:

    StorageError                the backend failed (connection, permission): retry may help
     ├── ObjectNotFound         no such object (expired, never written)
     └── ObjectTooLarge         a put passed `max_bytes`; nothing is left behind
"""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

CHUNK_BYTES = 256 * 1024


class StorageError(Exception):
    pass


class ObjectNotFound(StorageError):
    pass


class ObjectTooLarge(StorageError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the object is over the limit of {limit} bytes")
        self.limit = limit


@dataclass
class StoredObject:
    size: int
    content_type: str
    chunks: AsyncIterator[bytes]


def content_type_of(key: str) -> str:
    guessed, _ = mimetypes.guess_type(key)
    return guessed or "application/octet-stream"


class ObjectStore(Protocol):
    kind: str  # "directory" | "s3"

    async def put(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str = "",
                  max_bytes: int) -> int:
        """Write the chunks as one object (atomically: a reader sees all of it or nothing).
        Raises ObjectTooLarge past `max_bytes`, StorageError."""
        ...

    async def put_many(self, items: Sequence[tuple[str, bytes, str]]) -> list[int | StorageError]:
        """Small objects (key, data, content type) held in memory already, written together;
        each one's size, or the error that stopped that one alone."""
        ...

    async def open(self, key: str, *, chunk_bytes: int = CHUNK_BYTES) -> StoredObject:
        """Raises ObjectNotFound, StorageError. Close `chunks` (aclose) if not read to the end."""
        ...

    async def delete_prefix(self, prefix: str) -> None:
        """Delete every object under `prefix/`. Idempotent."""
        ...

    async def keys(self, prefix: str) -> list[str]:
        ...

    def sign_get(self, keys: Sequence[str], ttl: float) -> list[str] | None:
        ...

    def sign_put(self, keys: Sequence[str], ttl: float) -> list[str] | None:
        ...

    async def aclose(self) -> None:
        ...
