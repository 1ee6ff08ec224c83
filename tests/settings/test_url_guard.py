"""The URL guard is an allow list, it decides before any connection is made, every request goes to
the address it checked, and every fetch has a total deadline.

No test here sends a packet anywhere but 127.0.0.1: names are resolved by a stub, and a socket
that tries to connect fails the test (recording where it was going) instead of connecting — so
even a guard that wrongly lets an address through cannot send traffic there.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

import httpx
import pytest

from gen_worker.providers import Output, inline_outputs
from imagemesh import errors
from imagemesh.urlguard import fetch_bytes, is_public

LOOPBACK = ["127.0.0.0/8"]

ALLOWED = ["8.8.8.8", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8",
           "2002:808:808::1",     # 6to4 of a global address
           "64:ff9b::808:808"]    # NAT64 of a global address
REFUSED = [
    "100.64.0.1", "100.100.100.200",            # CGNAT / shared (a cloud metadata address)
    "2002:7f00:1::", "2002:a9fe:a9fe::",       # 6to4 embedding 127.0.0.1, 169.254.169.254
    "2002:a00:1::", "2002:6440:1::",           # 6to4 embedding 10.0.0.1, 100.64.0.1
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",   # NAT64 embedding loopback, link-local
    "64:ff9b:1::8.8.8.8",                      # local-use NAT64
    "::ffff:127.0.0.1", "::ffff:100.64.0.1",   # IPv4-mapped
    "::127.0.0.1", "::8.8.8.8",                # IPv4-compatible (deprecated)
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",    # Teredo
    "fec0::1",                                 # site-local
    "224.0.0.1", "239.255.255.250", "ff0e::1", # multicast
    "0.0.0.0", "::", "255.255.255.255", "240.0.0.1", "198.18.0.1", "192.0.0.8",
    "127.0.0.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "fe80::1", "fc00::1", "fd12:3456::1", "192.0.2.1", "2001:db8::1",
]


@pytest.mark.parametrize("address", ALLOWED)
def test_globally_routable_addresses_pass(address):
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", REFUSED)
def test_everything_else_is_refused(address):
    assert not is_public(ipaddress.ip_address(address))


@pytest.fixture
def connections(monkeypatch):
    """Every outgoing connection attempt, refused and recorded: [(host, port)]."""
    tried: list[tuple] = []

    def refuse(self, address, *args):
        tried.append(address[:2])
        raise ConnectionRefusedError(111, "connection blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return tried


def stub_resolver(*answers: str):
    asked: list[str] = []

    async def resolve(host: str, port: int):
        asked.append(host)
        return [ipaddress.ip_address(a) for a in answers]
    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


@pytest.mark.parametrize("answers", [
    ["100.100.100.200"],                 # the metadata service behind CGNAT space
    ["2002:7f00:1::"],                   # loopback through 6to4
    ["93.184.216.34", "10.0.0.7"],       # one bad address among good ones is enough
    ["64:ff9b::a9fe:a9fe"],              # link-local through NAT64
])
async def test_a_name_resolving_to_a_refused_address_is_refused_before_any_connection(connections, answers):
    resolve = stub_resolver(*answers)
    async with httpx.AsyncClient() as client:
        with pytest.raises(errors.InvalidInput) as info:
            await fetch_bytes(client, "https://images.example.com/a.png?sig=secret", max_bytes=1000,
                              allow_private=False, resolve=resolve)
    assert resolve.asked == ["images.example.com"]
    assert connections == []
    assert "only globally routable addresses" in info.value.message and "secret" not in info.value.message


@pytest.mark.parametrize("url", ["http://100.64.0.1/x.png", "http://[2002:7f00:1::]/x.png",
                                 "http://[::ffff:100.100.100.200]/x.png", "https://[64:ff9b::7f00:1]/"])
async def test_a_literal_refused_address_is_refused_before_any_connection(connections, url):
    resolve = stub_resolver()
    async with httpx.AsyncClient() as client:
        with pytest.raises(errors.InvalidInput):
            await fetch_bytes(client, url, max_bytes=1000, allow_private=False, resolve=resolve)
    assert connections == [] and resolve.asked == []


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_the_request_goes_to_the_address_that_was_checked(connections, scheme):
    """DNS rebinding: whatever the name resolves to at connect time, we connect to the address
    the guard checked (for https too: the name is the TLS server name, not a second lookup)."""
    resolve = stub_resolver("93.184.216.34")
    async with httpx.AsyncClient() as client:
        with pytest.raises(errors.Unavailable):
            await fetch_bytes(client, f"{scheme}://rebind.example.com/a.png", max_bytes=1000,
                              allow_private=False, resolve=resolve, timeout=5)
    assert connections and all(host == "93.184.216.34" for host, _port in connections), connections


async def test_a_trickling_server_cannot_hold_a_fetch_past_its_deadline(trickle_server):
    started = time.monotonic()
    async with httpx.AsyncClient() as client:
        with pytest.raises(errors.Unavailable) as info:
            await fetch_bytes(client, f"{trickle_server}/slow.png", max_bytes=1000,
                              allow_private=LOOPBACK, timeout=3)
    elapsed = time.monotonic() - started
    assert 2.9 <= elapsed < 3.8, elapsed
    assert "longer than 3s" in info.value.message


async def test_inline_outputs_have_a_total_deadline_too(trickle_server):
    started = time.monotonic()
    async with httpx.AsyncClient() as client:
        with pytest.raises(errors.Unavailable) as info:
            await inline_outputs([Output(url=f"{trickle_server}/a.png")], client, allow_private=LOOPBACK,
                                 timeout=3)
    assert time.monotonic() - started < 3.8
    assert info.value.message.startswith("output 1:")


def _tls_files(tmp_path, name: str):
    """A CA and a server certificate for `name`, signed by it: (ca.pem, cert.pem, key.pem)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = [tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"]
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


async def test_https_to_the_pinned_address_still_verifies_the_name(tmp_path):
    import ssl

    ca, cert, key = _tls_files(tmp_path, "images.test")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    seen_sni: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: seen_sni.append(name)

    async def handle(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 3\r\n\r\nabc")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca))) as client:
            data, ctype = await fetch_bytes(client, f"https://images.test:{port}/a.png", max_bytes=100,
                                            allow_private=LOOPBACK, resolve=stub_resolver("127.0.0.1"))
            assert (data, ctype) == (b"abc", "image/png")
            assert seen_sni == ["images.test"]
            # The certificate is for images.test: another name pinned to the same address fails.
            with pytest.raises(errors.Unavailable):
                await fetch_bytes(client, f"https://other.test:{port}/a.png", max_bytes=100,
                                  allow_private=LOOPBACK, resolve=stub_resolver("127.0.0.1"))
    finally:
        server.close()
        await server.wait_closed()
