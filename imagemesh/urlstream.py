"""Open a URL someone else gave us as a stream, under the rules of `imagemesh.urlguard`.

`fetch_bytes` there reads a body into memory; a provider's output can be 70 MB, so copying it
into storage must never hold it whole. `open_url` applies the same checks (http/https only,
every resolved address public unless allowed, the connection pinned to the checked address,
redirects followed by hand and each checked) and hands back the response body as chunks, for
the caller to write on and cap as it goes.

    async with open_url(client, url, allow_private=False) as body:
        body.length          # Content-Length when the server sent one (and no encoding), else None
        body.content_type    # without parameters
        async for chunk in body.chunks: ...

Errors (as urlguard's): InvalidInput for a refused URL or a 4xx (an expired signed URL answers
403/404/410), Unavailable for 5xx, connection errors and timeouts, including while reading.
Messages name the scheme and host only (query strings carry signatures).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from imagemesh.errors import InvalidInput, Unavailable
from imagemesh.urlguard import AllowPrivate, _pinned, check_url


@dataclass
class RemoteBody:
    chunks: AsyncIterator[bytes]
    length: int | None
    content_type: str


@contextlib.asynccontextmanager
async def open_url(client: httpx.AsyncClient, url: str, *, allow_private: AllowPrivate,
                   max_redirects: int = 3, timeout: float | None = 30.0) -> AsyncIterator[RemoteBody]:
    for _hop in range(max_redirects + 1):
        host, address = await check_url(url, allow_private=allow_private)
        scheme = urlsplit(url).scheme.lower()
        target, headers = _pinned(url, address)
        # https: the name, not the pinned address, is the TLS server name (and what the
        # certificate is checked against), as in urlguard.fetch_bytes.
        extensions = {"sni_hostname": host} if scheme == "https" else {}
        where = f"{scheme}://{host}"
        try:
            request = client.build_request("GET", target, headers=headers, timeout=timeout, extensions=extensions)
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.TimeoutException:
            raise Unavailable(f"fetching from {where} timed out") from None
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot fetch from {where}: {type(exc).__name__}") from None
        try:
            if response.is_redirect:
                location = response.headers.get("location")
                if not location:
                    raise InvalidInput(f"{where} answered a redirect without a location")
                url = urljoin(url, location)
                continue
            if response.status_code >= 500:
                raise Unavailable(f"{where} answered HTTP {response.status_code}")
            if response.status_code >= 400:
                raise InvalidInput(f"fetching from {where} failed: HTTP {response.status_code} (expired or wrong URL?)")
            declared = response.headers.get("content-length", "")
            length = int(declared) if declared.isdigit() and "content-encoding" not in response.headers else None
            content_type = response.headers.get("content-type", "").split(";", 1)[0].strip()
            yield RemoteBody(chunks=_read(response, where), length=length, content_type=content_type)
            return
        finally:
            await response.aclose()
    raise InvalidInput(f"the URL redirected more than {max_redirects} times")


async def _read(response: httpx.Response, where: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except httpx.TimeoutException:
        raise Unavailable(f"reading from {where} timed out") from None
    except httpx.TransportError as exc:
        raise Unavailable(f"reading from {where} failed: {type(exc).__name__}") from None
