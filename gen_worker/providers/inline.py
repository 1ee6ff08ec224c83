"""Turn output URLs into bytes, for callers who asked for `inline_outputs`.

Each URL is fetched through `imagemesh.urlguard.fetch_bytes` (http/https only, no private
addresses unless allowed, size cap), all outputs of a call at once. Outputs that already carry
bytes are kept as they are. Errors are those of `fetch_bytes` (InvalidInput: refused, too big,
4xx such as an expired URL; Unavailable: connection errors, 5xx), their message prefixed with
which output failed. Memory: at most `max_bytes` per output is held while reading.
"""

from __future__ import annotations

import asyncio
import dataclasses

import httpx

from gen_worker.providers.base import Output
from gen_worker.providers.http import image_size
from imagemesh.urlguard import AllowPrivate, fetch_bytes

DEFAULT_MAX_BYTES = 20 * 1024 * 1024


async def _inline_one(client: httpx.AsyncClient, index: int, output: Output, *, max_bytes: int,
                      allow_private: AllowPrivate, timeout: float) -> Output:
    if output.data is not None or not output.url:
        return output
    try:
        data, content_type = await fetch_bytes(client, output.url, max_bytes=max_bytes,
                                               allow_private=allow_private, timeout=timeout)
    except Exception as exc:
        message = getattr(exc, "message", None)
        if message is None:
            raise
        raise type(exc)(f"output {index + 1}: {message}", retryable=exc.retryable) from None
    width, height = output.width, output.height
    if not (width and height):
        width, height = image_size(data)
    return dataclasses.replace(output, url=None, data=data, width=width, height=height,
                               content_type=content_type or output.content_type,
                               url_expires_at_ms=0)


async def inline_outputs(outputs: list[Output], client: httpx.AsyncClient, *,
                         max_bytes: int = DEFAULT_MAX_BYTES, allow_private: AllowPrivate = False,
                         timeout: float = 30.0) -> list[Output]:
    """Return `outputs` with every URL replaced by the bytes it points to."""
    return list(await asyncio.gather(*(
        _inline_one(client, i, output, max_bytes=max_bytes, allow_private=allow_private,
                    timeout=timeout)
        for i, output in enumerate(outputs))))
