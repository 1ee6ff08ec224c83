"""Getting a batch's outputs onto this machine: every output, from wherever it is, and nothing
ever written over.

    saved = await save_result(client, batch_id, result, Path("out"), http)   # as results arrive
    await download_batch(client, batch_id, directory=Path("out"))            # a finished batch
    await download_batch(client, batch_id, zip_path=Path("batch.zip"))

An output is fetched from where it is: `data` (inline) is written as it is; a stored `object`
is fetched from its presigned `url` when it has one (S3: straight from storage), else, or when
that URL fails, streamed through the gateway with `DownloadFile`; a provider's `url` is
fetched over HTTP. Bodies are streamed to a `.part` file and renamed into place when complete.

Layout: `<dir>/<task index>/<filename>`. Tasks are kept apart by their index, so two tasks that
name their output the same keep both files; a name already taken in that folder (a second run
into the same directory) becomes `name (2).ext`. In a ZIP the entries are `<task index>/<filename>`.

Errors: DownloadFailed naming the file and why (NOT_FOUND from the gateway, an HTTP status);
a partial file is removed.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx

from imagemesh import filenames
from imagemesh.v1 import imagemesh_pb2 as pb


class DownloadFailed(Exception):
    pass


def free_path(path: Path) -> Path:
    """`path`, or `name (2).ext`, `name (3).ext`... whichever does not exist yet."""
    if not path.exists():
        return path
    stem, ext = filenames.split_ext(path.name)
    if not ext:
        stem, dot, tail = path.name.rpartition(".")
        stem, ext = (stem, "." + tail) if dot and stem else (path.name, "")
    n = 2
    while (candidate := path.with_name(f"{stem} ({n}){ext}")).exists():
        n += 1
    return candidate


def entry(f: pb.OutputFile) -> dict[str, Any]:
    """What results.json says about an output before (or without) downloading it."""
    row: dict[str, Any] = {"filename": f.filename}
    if f.url:
        row["url"] = f.url
    if f.object:
        row["object"] = f.object
    if f.size_bytes or f.WhichOneof("location") == "data":
        row["size_bytes"] = f.size_bytes or len(f.data)
    return row


async def chunks_of(client, batch_id: str, f: pb.OutputFile, http: httpx.AsyncClient) -> AsyncIterator[bytes]:
    """The bytes of one output, from wherever it is (see the module doc)."""
    if f.WhichOneof("location") == "data":
        yield f.data
        return
    if f.url:
        started = False
        try:
            async with http.stream("GET", f.url, timeout=httpx.Timeout(60.0, connect=10.0)) as response:
                if response.status_code < 300:
                    async for chunk in response.aiter_bytes():
                        started = True
                        yield chunk
                    return
                status = f"HTTP {response.status_code}"
        except httpx.TransportError as exc:
            if started:  # part of it is written already: no second source can continue it
                raise DownloadFailed(f"{f.filename}: the download broke off ({type(exc).__name__})") from None
            status = type(exc).__name__
        if not f.object:
            raise DownloadFailed(f"{f.filename}: fetching its URL failed ({status})")
    if not f.object:
        raise DownloadFailed(f"{f.filename}: the result has neither data, a URL nor a stored object")
    try:
        async for chunk in client.download(batch_id, f.object):
            yield chunk.data
    except grpc.aio.AioRpcError as exc:
        raise DownloadFailed(f"{f.filename}: {exc.code().name}: {exc.details()}") from None


async def save_file(client, batch_id: str, f: pb.OutputFile, folder: Path, http: httpx.AsyncClient) -> Path:
    """Write one output into `folder` under its (sanitised) name, never over an existing file."""
    folder.mkdir(parents=True, exist_ok=True)
    target = free_path(folder / filenames.sanitize(f.filename))
    part = target.with_name(f".{target.name}.part")
    try:
        with open(part, "wb") as out:
            async for chunk in chunks_of(client, batch_id, f, http):
                out.write(chunk)
        target = free_path(target)  # another writer may have taken the name meanwhile
        part.rename(target)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    return target


async def save_result(client, batch_id: str, result: pb.TaskResult, root: Path,
                      http: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Download every output of a result into `root/<task index>/`; results.json rows."""
    rows = []
    for f in result.files:
        row = entry(f)
        row["path"] = str(await save_file(client, batch_id, f, root / str(result.task_index), http))
        rows.append(row)
    return rows


async def download_batch(client, batch_id: str, *, directory: Path | None = None, zip_path: Path | None = None,
                         on_result=None) -> dict[str, int]:
    """Every output of a batch's succeeded tasks into a directory or a new ZIP file (replays
    the batch's events: an unfinished batch is followed until it ends). Returns counts."""
    if (directory is None) == (zip_path is None):
        raise ValueError("give a directory or a zip path")
    if zip_path is not None and zip_path.exists():
        raise DownloadFailed(f"{zip_path} exists; choose another name (nothing is overwritten)")
    counts = {"tasks": 0, "files": 0, "failed_tasks": 0}
    archive = part = None
    if zip_path is not None:
        part = zip_path.with_name(f".{zip_path.name}.part")
        archive = zipfile.ZipFile(part, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
    try:
        async with httpx.AsyncClient() as http:
            async for event in client.watch(batch_id):
                if not event.HasField("result"):
                    continue
                r = event.result
                if r.state != pb.SUCCEEDED:
                    counts["failed_tasks"] += 1
                    continue
                counts["tasks"] += 1
                for f in r.files:
                    if archive is not None:
                        await _add_to_zip(archive, f"{r.task_index}/{filenames.sanitize(f.filename)}",
                                          chunks_of(client, batch_id, f, http))
                    else:
                        await save_file(client, batch_id, f, directory / str(r.task_index), http)  # type: ignore[operator]
                    counts["files"] += 1
                if on_result is not None:
                    on_result(r)
        if archive is not None:
            archive.close()
            archive = None
            if zip_path.exists():  # type: ignore[union-attr]
                raise DownloadFailed(f"{zip_path} appeared meanwhile; nothing is overwritten")
            part.rename(zip_path)  # type: ignore[union-attr]
    finally:
        if archive is not None:
            archive.close()
        if part is not None and part.exists():
            part.unlink()
    return counts


async def _add_to_zip(archive: zipfile.ZipFile, name: str, chunks: AsyncIterator[bytes]) -> None:
    taken = set(archive.namelist())
    if name in taken:
        stem, dot, ext = name.rpartition(".")
        n = 2
        while f"{stem} ({n}){dot}{ext}" in taken:
            n += 1
        name = f"{stem} ({n}){dot}{ext}"
    with archive.open(name, "w", force_zip64=True) as out:
        async for chunk in chunks:
            out.write(chunk)
