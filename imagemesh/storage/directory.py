"""The embedded store: objects are files under one directory. Nothing to install.

    <root>/<tenant>/<batch>/<task>/<attempt>/<filename>

A put writes `.<name>.<random>.part` beside the target and renames it into place when the last
chunk is in, so a reader never sees half an object and a failed or oversized put leaves
nothing. Small objects (under `FLUSH_BYTES`) are written with one hop to a thread; larger ones
are written chunk by chunk as they arrive, so memory stays at one chunk whatever the size.

Several gateways can share one store only through a shared directory (one machine, or a
ReadWriteMany volume); otherwise use S3.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from pathlib import Path

from .base import CHUNK_BYTES, ObjectNotFound, ObjectTooLarge, StorageError, StoredObject, content_type_of
from .keys import check

FLUSH_BYTES = 1024 * 1024


class DirectoryStore:
    kind = "directory"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the storage directory {self.root}: {exc.strerror}") from None

    def path(self, key: str) -> Path:
        return self.root.joinpath(*check(key).split("/"))

    async def put(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str = "",
                  max_bytes: int) -> int:
        target = self.path(key)
        part = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        pending: list[bytes] = []
        pending_bytes = size = 0
        handle = None
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise ObjectTooLarge(max_bytes)
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= FLUSH_BYTES:
                    if handle is None:
                        handle = await asyncio.to_thread(_create, part)
                    data, pending, pending_bytes = b"".join(pending), [], 0
                    await asyncio.to_thread(handle.write, data)

            def finish(handle=handle) -> None:
                handle = handle or _create(part)
                with handle:
                    handle.write(b"".join(pending))
                os.replace(part, target)

            await asyncio.to_thread(finish)
            handle = None
        except BaseException:
            if handle is not None:
                handle.close()
            with contextlib.suppress(OSError):
                part.unlink()
            raise
        return size

    async def open(self, key: str, *, chunk_bytes: int = CHUNK_BYTES) -> StoredObject:
        path = self.path(key)
        try:
            handle = await asyncio.to_thread(open, path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise StorageError(f"cannot read an object: {exc.strerror}") from None
        size = os.fstat(handle.fileno()).st_size

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while True:
                    data = await asyncio.to_thread(handle.read, chunk_bytes)
                    if not data:
                        return
                    yield data
            finally:
                handle.close()

        return StoredObject(size=size, content_type=content_type_of(key), chunks=chunks())

    async def delete_prefix(self, prefix: str) -> None:
        path = self.path(prefix)
        await asyncio.to_thread(shutil.rmtree, path, True)

    async def keys(self, prefix: str) -> list[str]:
        base = self.path(prefix)

        def walk() -> list[str]:
            found = []
            for dirpath, _dirs, files in os.walk(base):
                for name in files:
                    if not name.endswith(".part"):
                        found.append(Path(dirpath, name).relative_to(self.root).as_posix())
            return sorted(found)

        return await asyncio.to_thread(walk)

    def sign_get(self, keys: Sequence[str], ttl: float) -> list[str] | None:
        return None  # downloads go through the gateway (DownloadFile)

    def sign_put(self, keys: Sequence[str], ttl: float) -> list[str] | None:
        return None  # workers upload through the gateway (WorkerObjects.PutObject)

    async def aclose(self) -> None:
        pass


def _create(part: Path):
    part.parent.mkdir(parents=True, exist_ok=True)
    return open(part, "xb")
