"""TLS everywhere: a mesh (gateway and generation worker processes) over mutual TLS runs a
batch; a plaintext client, a client without a certificate and a client whose certificate
another CA signed are refused; a certificate replaced on disk is served to new connections
without a restart. Certificates are made at test time (tests/transport/certs.py)."""

from __future__ import annotations

import asyncio
import socket
import ssl

import grpc
import pytest
from cryptography import x509

from imagemesh.client import Client, generate
from imagemesh.tls import ChannelTls
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.processes import CLIENT_KEY

from . import health


def client_tls(pki, pair=None) -> ChannelTls:
    pair = pair or pki.client
    return ChannelTls(ca=str(pki.authority.ca_path), cert=str(pair.cert), key=str(pair.key))


async def run_batch(address: str, tls, n: int = 6) -> pb.BatchSummary:
    async with Client(address, CLIENT_KEY, tls=tls, reattach_attempts=0) as client:
        summary = None
        async for event in client.submit([generate(f"fox {i}", f"fox{i}.png", providers=["local"])
                                          for i in range(n)]):
            if event.HasField("summary"):
                summary = event.summary
        return summary


def served_certificate_serial(port: int, pki) -> int:
    """The serial of the certificate the gateway presents to a new TLS connection."""
    context = ssl.create_default_context(cafile=str(pki.authority.ca_path))
    context.set_alpn_protocols(["h2"])
    context.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


@pytest.fixture
def tls_mesh(mesh_factory, pki):
    """A gateway requiring client certificates, and one generation worker dialling it over mTLS."""
    m = mesh_factory(IMAGEMESH_CAPACITY="4")
    m.start_gateway(**pki.gateway_env())
    m.start_worker(**pki.worker_env())
    return m


@pytest.mark.timeout(120)
async def test_a_mesh_over_mutual_tls_runs_a_batch(tls_mesh, pki):
    summary = await run_batch(tls_mesh.address, client_tls(pki))
    assert (summary.total, summary.succeeded) == (6, 6)
    worker_health = int(tls_mesh.workers[0].values["HEALTH_PORT"])
    assert health.status(worker_health) == "SERVING"  # the health port stays plaintext (probes)
    assert "mutual TLS" in tls_mesh.gateways[0].log()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("who", ["plaintext", "no client certificate", "certificate from another CA"])
async def test_clients_without_a_trusted_certificate_are_refused(tls_mesh, pki, who):
    tls = {"plaintext": False,
           "no client certificate": ChannelTls(ca=str(pki.authority.ca_path)),
           "certificate from another CA": client_tls(pki, pki.foreign_client)}[who]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await asyncio.wait_for(run_batch(tls_mesh.address, tls, n=1), 20)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.timeout(60)
def test_a_tls_gateway_answers_probes_in_plaintext_on_its_health_port_only(tls_mesh, pki):
    api = int(tls_mesh.address.rpartition(":")[2])
    assert health.status(api) == "UNAVAILABLE"  # the API port speaks TLS only
    creds = grpc.ssl_channel_credentials(pki.authority.ca_path.read_bytes(), pki.client.key.read_bytes(),
                                         pki.client.cert.read_bytes())
    assert health.status(api, tls_credentials=creds) == "SERVING"
    probes = int(tls_mesh.gateways[0].announced("HEALTH_PORT"))  # kubelet's probes can't do TLS
    assert health.status(probes) == "SERVING"
    assert health.status(probes, "liveness") == "SERVING"


@pytest.mark.timeout(120)
async def test_a_certificate_rotated_on_disk_is_served_without_restart(tls_mesh, pki):
    port = int(tls_mesh.address.rpartition(":")[2])
    old = pki.server.serial
    assert served_certificate_serial(port, pki) == old

    pki.authority.issue("gateway", server=True, into=pki.server)  # same paths, new certificate
    assert pki.server.serial != old
    assert served_certificate_serial(port, pki) == pki.server.serial
    summary = await run_batch(tls_mesh.address, client_tls(pki), n=2)  # new connections work
    assert summary.succeeded == 2
    assert tls_mesh.gateways[0].proc.poll() is None
    assert "certificate files changed" in tls_mesh.gateways[0].log()
