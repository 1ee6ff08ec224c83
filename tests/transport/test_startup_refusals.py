"""Refusals at start, each one line on stderr and exit status 2: a gateway without
IMAGEMESH_SECRET_KEY (unless IMAGEMESH_SINGLE_INSTANCE), a second gateway on a busy port (gRPC's
port reuse is off), a busy metrics or health port, half a TLS configuration. Plus the ports: no
process defaults to Prometheus's 9090, each kind has its own, and metrics and health bind the
address their setting names (127.0.0.1 unless told otherwise)."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from enhance_worker.settings import EnhanceSettings
from gateway.settings import GatewaySettings
from gen_worker.settings import WorkerSettings

from . import health
from .conftest import listening_addresses, run_to_exit


def one_line(done, prog: str = "imagemesh-gateway") -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, (done.returncode, done.stderr[-3000:])
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


def gateway_env(m, **extra: str) -> dict[str, str]:
    return m.env(**{"IMAGEMESH_LISTEN": "127.0.0.1:0", "IMAGEMESH_LOG_LEVEL": "WARNING", **extra})


@pytest.mark.timeout(60)
def test_gateway_refuses_to_start_without_a_secret_key(mesh_factory):
    m = mesh_factory()
    env = gateway_env(m)
    del env["IMAGEMESH_SECRET_KEY"]
    line = one_line(run_to_exit("gateway", env))
    assert "IMAGEMESH_SECRET_KEY" in line and "IMAGEMESH_SINGLE_INSTANCE" in line


@pytest.mark.timeout(60)
def test_single_instance_gateway_starts_without_a_secret_key(mesh_factory):
    m = mesh_factory()
    gateway = m.start_gateway(IMAGEMESH_SECRET_KEY="", IMAGEMESH_SINGLE_INSTANCE="true")
    health.wait_for(int(gateway.announced("HEALTH_PORT")), "SERVING")
    assert "IMAGEMESH_SINGLE_INSTANCE" in gateway.log()  # said at start


@pytest.mark.timeout(60)
def test_a_second_gateway_on_a_busy_port_fails_to_start(mesh_factory):
    m = mesh_factory()
    first = m.start_gateway()
    line = one_line(run_to_exit("gateway", gateway_env(m, IMAGEMESH_LISTEN=first.values["GATEWAY"])))
    assert "IMAGEMESH_LISTEN" in line and "in use" in line
    assert first.proc.poll() is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("module, prog", [("gateway", "imagemesh-gateway"), ("gen_worker", "imagemesh-gen-worker")])
@pytest.mark.parametrize("setting", ["IMAGEMESH_METRICS_PORT", "IMAGEMESH_HEALTH_PORT"])
def test_a_busy_metrics_or_health_port_is_one_line(mesh_factory, module, prog, setting):
    m = mesh_factory()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line(run_to_exit(module, gateway_env(m, **{setting: str(port)})), prog)
    assert setting in line and "in use" in line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("settings", [{"IMAGEMESH_TLS_CERT": "cert.pem"},
                                      {"IMAGEMESH_TLS_CERT": "/nonexistent/cert.pem", "IMAGEMESH_TLS_KEY": "/nonexistent/key.pem"}])
def test_a_gateway_with_unusable_tls_settings_does_not_fall_back_to_plaintext(mesh_factory, settings):
    m = mesh_factory()
    line = one_line(run_to_exit("gateway", gateway_env(m, **settings)))
    assert "IMAGEMESH_TLS_" in line


def test_tls_key_that_is_not_the_certificates_is_refused(mesh_factory, pki):
    m = mesh_factory()
    line = one_line(run_to_exit("gateway", gateway_env(m, IMAGEMESH_TLS_CERT=str(pki.server.cert),
                                                       IMAGEMESH_TLS_KEY=str(pki.client.key))))
    assert "IMAGEMESH_TLS_KEY" in line and "does not belong" in line


def default(cls, name: str):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def test_each_process_has_its_own_default_ports_and_none_is_prometheus():
    ports = {(cls.__name__, name): default(cls, name)
             for cls in (GatewaySettings, WorkerSettings, EnhanceSettings)
             for name in ("metrics_port", "health_port")}
    assert 9090 not in ports.values(), ports
    assert len(set(ports.values())) == len(ports), ports
    assert int(default(GatewaySettings, "listen").rpartition(":")[2]) not in ports.values()


@pytest.mark.timeout(60)
def test_metrics_and_health_bind_the_configured_address(mesh_factory):
    m = mesh_factory()
    m.start_gateway()
    worker = m.start_worker()  # default hosts
    metrics, probes = int(worker.announced("METRICS_PORT")), int(worker.values["HEALTH_PORT"])
    assert listening_addresses(metrics) == {"127.0.0.1"}
    assert listening_addresses(probes) == {"127.0.0.1"}

    other = m.start_worker(IMAGEMESH_METRICS_HOST="::1", IMAGEMESH_HEALTH_HOST="::1")
    metrics, probes = int(other.announced("METRICS_PORT")), int(other.values["HEALTH_PORT"])
    assert listening_addresses(metrics) == {"::1"}
    assert listening_addresses(probes) == {"::1"}
