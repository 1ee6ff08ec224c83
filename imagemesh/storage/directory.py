"""The embedded store: objects are files under one directory. Nothing to install.

    <root>/<tenant>/<batch>/<task>/<attempt>/<filename>

A put writes `.<name>.<random>.part` beside the target and renames it into place when the last
chunk is in, so a reader never sees half an object and a failed or oversized put leaves
nothing. Larger objects are written chunk by chunk in a thread as they arrive, so memory stays
at one chunk whatever the size. Small ones come in groups (`put_many`, from the workers'
`PutSmallObjects` stream) and a group is written in one trip to a thread, so the event loop
never waits for the disk (0.1-0.5 ms per small object here, most of it the two mkdir calls of
a new task's directories; known directories are remembered). The thread is slowed by the GIL
(it waits for it after each filesystem call while the loop is busy), but the objects that
arrive meanwhile make the next group larger, so the rate follows the load.

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
from collections import OrderedDict
from pathlib import Path

from .base import CHUNK_BYTES, ObjectNotFound, ObjectTooLarge, StorageError, StoredObject, content_type_of
from .keys import check

FLUSH_BYTES = 1024 * 1024


class DirectoryStore:
    kind = "directory"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self._dirs: OrderedDict[Path, None] = OrderedDict()
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

    async def put_many(self, items: Sequence[tuple[str, bytes, str]]) -> list[int | StorageError]:
        paths = []
        for key, _data, _type in items:
            try:
                paths.append(self.path(key))
            except ValueError as exc:
                paths.append(StorageError(str(exc)))

        def write_all() -> list[int | StorageError]:
            done: list[int | StorageError] = []
            for target, (_key, data, _type) in zip(paths, items):
                if isinstance(target, StorageError):
                    done.append(target)
                    continue
                part = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
                try:
                    self._make_dirs(target.parent)
                    with open(part, "xb") as handle:
                        handle.write(data)
                    os.replace(part, target)
                    done.append(len(data))
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        part.unlink()
                    done.append(StorageError(f"cannot write an object: {exc.strerror}"))
            return done

        return await asyncio.to_thread(write_all)

    def _make_dirs(self, path: Path) -> None:
        """Create `path` and any missing parents, remembering the ones that exist (a task's
        two new directories cost two mkdir calls, nothing is asked twice)."""
        if path in self._dirs:  # (a thread may race another here: mkdir's EEXIST is fine)
            return
        missing = []
        while path not in self._dirs and path != self.root:
            missing.append(path)
            path = path.parent
        for directory in reversed(missing):
            try:
                os.mkdir(directory)
            except FileExistsError:
                pass
            self._dirs[directory] = None
        while len(self._dirs) > 4096:
            self._dirs.popitem(last=False)

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
