"""Reading a result's outputs in tests, wherever they are (inline, stored, at a URL)."""

from __future__ import annotations

import httpx

from imagemesh import downloads
from imagemesh.v1 import imagemesh_pb2 as pb


async def output_bytes(client, batch_id: str, f: pb.OutputFile) -> bytes:
    async with httpx.AsyncClient() as http:
        return b"".join([c async for c in downloads.chunks_of(client, batch_id, f, http)])
