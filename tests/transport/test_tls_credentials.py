"""imagemesh.tls on a real in-process grpc.aio server (the health service only): the server
name override, a rotation caught half-written, and settings that can't work."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from imagemesh.tls import ChannelTls, ServerTls, TlsConfigError, channel

from .certs import pem_key
from .test_tls import served_certificate_serial


async def serve(tls: ServerTls) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", tls.credentials())
    await server.start()
    return server, port


async def check(port: int, tls: ChannelTls | None) -> str:
    async with channel(f"127.0.0.1:{port}", tls, []) as ch:
        try:
            reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_server_name_override_verifies_a_certificate_for_another_host(pki):
    named = pki.authority.issue("ingress", server=True, hosts=("gateway.imagemesh.test",))
    server, port = await serve(ServerTls.from_settings(str(named.cert), str(named.key)))
    try:
        ca = str(pki.authority.ca_path)
        assert await check(port, ChannelTls(ca=ca)) == "UNAVAILABLE"  # 127.0.0.1 is not in it
        assert await check(port, ChannelTls(ca=ca, server_name="gateway.imagemesh.test")) == "SERVING"
        assert await check(port, ChannelTls.from_environment(
            {"IMAGEMESH_TLS_CA": ca, "IMAGEMESH_TLS_SERVER_NAME": "gateway.imagemesh.test"})) == "SERVING"
    finally:
        await server.stop(0)


async def test_a_half_written_rotation_keeps_serving_the_previous_certificate(pki, caplog):
    tls = ServerTls.from_settings(str(pki.server.cert), str(pki.server.key), str(pki.authority.ca_path))
    server, port = await serve(tls)
    try:
        old = pki.server.serial
        pki.server.key.write_bytes(pem_key(ec.generate_private_key(ec.SECP256R1())))  # the key, not yet the cert
        assert await asyncio.to_thread(served_certificate_serial, port, pki) == old
        assert "keeping the previous certificate" in caplog.text
        pki.authority.issue("gateway", server=True, into=pki.server)  # the rotation completes
        assert await asyncio.to_thread(served_certificate_serial, port, pki) == pki.server.serial != old
    finally:
        await server.stop(0)


def test_settings_that_cannot_work_are_refused(pki, tmp_path):
    with pytest.raises(TlsConfigError, match="IMAGEMESH_TLS_KEY"):
        ServerTls.from_settings(str(pki.server.cert), "")
    with pytest.raises(TlsConfigError, match="does not belong"):
        ServerTls.from_settings(str(pki.server.cert), str(pki.client.key))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(TlsConfigError, match="not a PEM file"):
        ChannelTls.from_settings(ca=str(tmp_path / "junk.pem"))
    with pytest.raises(TlsConfigError, match="IMAGEMESH_TLS_CERT and IMAGEMESH_TLS_KEY"):
        ChannelTls.from_settings(ca=str(pki.authority.ca_path), cert=str(pki.client.cert))
    assert ServerTls.from_settings("", "") is None and ChannelTls.from_settings() is None
    assert ChannelTls.from_environment({}) is None
