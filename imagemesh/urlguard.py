"""Fetch an image from a URL someone else gave us, without letting them aim us at our own network.

Used for provider output URLs (`inline_outputs`) and for the enhance task's `image_url`. Rules:

- only `http` and `https`; anything else (`file:`, `ftp:`, `gopher:`, `data:`) is refused;
- the host is resolved once, and every address it resolves to must be public: loopback, private
  (10/8, 172.16/12, 192.168/16, fc00::/7), link-local (169.254/16 — cloud metadata lives
  there — and fe80::/10), multicast, reserved and unspecified addresses are refused unless
  `allow_private` permits them (True: all; or a list of CIDR networks, e.g. ["127.0.0.0/8"]);
- plain-http requests are sent to the address we checked (Host header and URL keep the name),
  so a DNS answer that changes between check and connect (rebinding) cannot redirect us; https
  requests connect by name, where certificate verification defeats rebinding;
- redirects are followed by hand, at most `max_redirects`, each target checked the same way;
- the body is read in chunks and abandoned as soon as it exceeds `max_bytes`.

Errors: `InvalidInput` for a refused URL, an oversized body or a 4xx answer (the caller gave a
bad URL — an expired signed URL answers 403/404/410); `Unavailable` for connection errors and 5xx
(may work later). Messages name the scheme and host only: URLs often carry signatures in their
query string, and those are secrets too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Iterable
from urllib.parse import urljoin, urlsplit

import httpx

from imagemesh.errors import InvalidInput, Unavailable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
AllowPrivate = bool | Iterable[str]


def _networks(allow_private: AllowPrivate) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    if isinstance(allow_private, bool):
        return []
    return [ipaddress.ip_network(net, strict=False) for net in allow_private]


def is_public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (address.is_private or address.is_loopback or address.is_link_local
                or address.is_multicast or address.is_reserved or address.is_unspecified)


def _permitted(address: Address, allow_private: AllowPrivate, networks: list) -> bool:
    if is_public(address) or allow_private is True:
        return True
    return any(address in net for net in networks)


async def _resolve(host: str, port: int) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidInput(f"cannot resolve host {host!r}: {exc.strerror or 'lookup failed'}") from None
    # Strip an IPv6 scope ("fe80::1%eth0") before parsing.
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]


async def check_url(url: str, *, allow_private: AllowPrivate) -> tuple[str, Address]:
    """Validate `url`; return (host, the address to connect to). Raises InvalidInput."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidInput("image URL is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidInput(f"image URL scheme {scheme or '(none)'!r} is not allowed: only http and https")
    host = parts.hostname
    if not host:
        raise InvalidInput("image URL has no host")
    addresses = await _resolve(host, port or (443 if scheme == "https" else 80))
    if not addresses:
        raise InvalidInput(f"host {host!r} resolves to no address")
    networks = _networks(allow_private)
    for address in addresses:
        if not _permitted(address, allow_private, networks):
            raise InvalidInput(
                f"image URL host {host!r} resolves to a non-public address ({address}); "
                "private, loopback and link-local addresses are refused")
    return host, addresses[0]


def _pinned(url: str, address: Address) -> tuple[str, dict[str, str]]:
    """Rewrite a plain-http URL to connect to `address`, keeping the Host header."""
    parts = urlsplit(url)
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=netloc).geturl(), {"Host": host_header}


async def fetch_bytes(client: httpx.AsyncClient, url: str, *, max_bytes: int,
                      allow_private: AllowPrivate, max_redirects: int = 3,
                      timeout: float | None = 30.0) -> tuple[bytes, str]:
    """GET `url` under the rules above; return (body, content type without parameters)."""
    for _hop in range(max_redirects + 1):
        host, address = await check_url(url, allow_private=allow_private)
        scheme = urlsplit(url).scheme.lower()
        target, headers = (_pinned(url, address) if scheme == "http" else (url, {}))
        where = f"{scheme}://{host}"
        try:
            async with client.stream("GET", target, headers=headers, follow_redirects=False,
                                     timeout=timeout) as response:
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise InvalidInput(f"{where} answered a redirect without a location")
                    url = urljoin(url, location)
                    continue
                if response.status_code >= 500:
                    raise Unavailable(f"{where} answered HTTP {response.status_code}")
                if response.status_code >= 400:
                    raise InvalidInput(f"fetching the image from {where} failed: HTTP "
                                       f"{response.status_code} (expired or wrong URL?)")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise InvalidInput(f"image at {where} is {int(declared)} bytes, "
                                       f"over the limit of {max_bytes}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise InvalidInput(f"image at {where} is over the limit of {max_bytes} bytes")
                content_type = response.headers.get("content-type", "").split(";", 1)[0].strip()
                return bytes(body), content_type
        except (httpx.TimeoutException,) :
            raise Unavailable(f"fetching the image from {where} timed out") from None
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot fetch the image from {where}: {type(exc).__name__}") from None
    raise InvalidInput(f"image URL redirected more than {max_redirects} times")
