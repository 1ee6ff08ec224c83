"""Fetch an image from a URL someone else gave us, without letting them aim us at our own network.

Used for provider output URLs (`inline_outputs`) and for the enhance task's `image_url`. Rules:

- only `http` and `https`; anything else (`file:`, `ftp:`, `gopher:`, `data:`) is refused;
- the host is resolved once, and every address it resolves to must be globally routable: an
  allow list, not a deny list. An address passes only if `ipaddress` calls it global and it is
  none of the exclusions below; so loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7),
  shared/CGNAT (100.64/10, where a cloud metadata service lives), link-local (169.254/16, also
  metadata, and fe80::/10), multicast, reserved and unspecified addresses are refused, and so is
  any IPv6 form that reaches an IPv4 address which is not global: IPv4-mapped (::ffff:a.b.c.d),
  6to4 (2002::/16, e.g. 2002:7f00:1:: is 127.0.0.1), NAT64 (64:ff9b::/96); the IPv6 forms that
  cannot be judged are refused outright (IPv4-compatible ::/96, local NAT64 64:ff9b:1::/48,
  Teredo 2001::/32, site-local fec0::/10). `allow_private` lifts this (True: all; or a list of
  CIDR networks, e.g. ["127.0.0.0/8"]) for tests and private deployments;
- every request is sent to the address we checked (the URL and Host header keep the name; for
  https the name is also the TLS server name, so the certificate is still verified against it),
  so a DNS answer that changes between check and connect (rebinding) cannot redirect us;
- redirects are followed by hand, at most `max_redirects`, each target checked the same way;
- the body is read in chunks and abandoned as soon as it exceeds `max_bytes`;
- the whole fetch (resolving, connecting, redirects, the body) has one total deadline,
  `timeout`: httpx's own timeouts are per operation, so a server trickling one byte every two
  seconds would otherwise hold a fetch with timeout=3 for as long as it likes.

Errors: `InvalidInput` for a refused URL, an oversized body or a 4xx answer (the caller gave a
bad URL — an expired signed URL answers 403/404/410); `Unavailable` for connection errors, 5xx
and the deadline (may work later). Messages name the scheme and host only: URLs often carry
signatures in their query string, and those are secrets too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urljoin, urlsplit

import httpx

from imagemesh.errors import InvalidInput, Unavailable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
AllowPrivate = bool | Iterable[str]


def _networks(allow_private: AllowPrivate) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    if isinstance(allow_private, bool):
        return []
    return [ipaddress.ip_network(net, strict=False) for net in allow_private]


# IPv4 ranges refused whatever `ipaddress` thinks (its idea of "global" differs between Python
# releases): RFC 6890's special-purpose blocks that are not globally reachable, and multicast.
_REFUSED_V4 = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
))
# IPv6 forms that carry an IPv4 address: judged by the address they carry.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# IPv6 ranges refused whatever they carry (deprecated, local, or tunnels to who knows where).
_REFUSED_V6 = tuple(ipaddress.IPv6Network(n) for n in (
    "::/96",            # IPv4-compatible (deprecated), and :: and ::1
    "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
    "64:ff9b:1::/48",   # local-use NAT64
    "2001::/32",        # Teredo
    "fec0::/10",        # site-local (deprecated)
))


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: Address) -> bool:
    """True only for a globally routable unicast address (see the module docstring)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_v4(address)
        if embedded is not None:
            return is_public(embedded)
        if any(address in net for net in _REFUSED_V6):
            return False
    elif any(address in net for net in _REFUSED_V4):
        return False
    return address.is_global and not (address.is_multicast or address.is_loopback or address.is_link_local
                                      or address.is_private or address.is_reserved or address.is_unspecified)


def _permitted(address: Address, allow_private: AllowPrivate, networks: list) -> bool:
    if is_public(address) or allow_private is True:
        return True
    return any(address in net for net in networks)


Resolver = Callable[[str, int], Awaitable[list[Address]]]


async def system_resolve(host: str, port: int) -> list[Address]:
    """The host's addresses from the system resolver. Raises InvalidInput when it has none."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidInput(f"cannot resolve host {host!r}: {exc.strerror or 'lookup failed'}") from None
    # Strip an IPv6 scope ("fe80::1%eth0") before parsing.
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]


async def _resolve(host: str, port: int, resolve: Resolver) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        return await resolve(host, port)


async def check_url(url: str, *, allow_private: AllowPrivate,
                    resolve: Resolver = system_resolve) -> tuple[str, Address]:
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
    addresses = await _resolve(host, port or (443 if scheme == "https" else 80), resolve)
    if not addresses:
        raise InvalidInput(f"host {host!r} resolves to no address")
    networks = _networks(allow_private)
    for address in addresses:
        if not _permitted(address, allow_private, networks):
            raise InvalidInput(
                f"image URL host {host!r} resolves to a non-public address ({address}); "
                "only globally routable addresses are fetched")
    return host, addresses[0]


def _pinned(url: str, address: Address) -> tuple[str, dict[str, str]]:
    """Rewrite a URL to connect to `address`, keeping the Host header."""
    parts = urlsplit(url)
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=netloc).geturl(), {"Host": host_header}


async def fetch_bytes(client: httpx.AsyncClient, url: str, *, max_bytes: int,
                      allow_private: AllowPrivate, max_redirects: int = 3,
                      timeout: float = 30.0, resolve: Resolver = system_resolve) -> tuple[bytes, str]:
    """GET `url` under the rules above, all of it within `timeout` seconds; return (body,
    content type without parameters). `resolve`: the name resolver (tests pass a stub)."""
    where = "the image URL"
    try:
        async with asyncio.timeout(timeout):
            for _hop in range(max_redirects + 1):
                host, address = await check_url(url, allow_private=allow_private, resolve=resolve)
                scheme = urlsplit(url).scheme.lower()
                target, headers = _pinned(url, address)
                # https: the name, not the pinned address, is the TLS server name (and what the
                # certificate is checked against).
                extensions = {"sni_hostname": host} if scheme == "https" else {}
                where = f"{scheme}://{host}"
                request = client.build_request("GET", target, headers=headers, timeout=timeout,
                                               extensions=extensions)
                response = await client.send(request, stream=True, follow_redirects=False)
                try:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise InvalidInput(f"{where} answered a redirect without a location")
                        url = urljoin(url, location)
                        continue
                    return await _read(response, where, max_bytes)
                finally:
                    await response.aclose()
    except (TimeoutError, httpx.TimeoutException):
        raise Unavailable(f"fetching the image from {where} took longer than {timeout:g}s") from None
    except httpx.TransportError as exc:
        raise Unavailable(f"cannot fetch the image from {where}: {type(exc).__name__}") from None
    raise InvalidInput(f"image URL redirected more than {max_redirects} times")


async def _read(response: httpx.Response, where: str, max_bytes: int) -> tuple[bytes, str]:
    if response.status_code >= 500:
        raise Unavailable(f"{where} answered HTTP {response.status_code}")
    if response.status_code >= 400:
        raise InvalidInput(f"fetching the image from {where} failed: HTTP "
                           f"{response.status_code} (expired or wrong URL?)")
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise InvalidInput(f"image at {where} is {int(declared)} bytes, over the limit of {max_bytes}")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise InvalidInput(f"image at {where} is over the limit of {max_bytes} bytes")
    content_type = response.headers.get("content-type", "").split(";", 1)[0].strip()
    return bytes(body), content_type
