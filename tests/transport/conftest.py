"""Fixtures of the transport tests: certificates made at test time, meshes of real processes,
and a look at a process's memory and listening sockets through /proc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, python_env
from tests.processes import Mesh

from .certs import Authority


@pytest.fixture
def mesh_factory(redis_server, tmp_path):
    """Meshes on a flushed Redis; every process is killed when the test ends."""
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_server.url).flushall()
    made: list[Mesh] = []

    def make(**settings) -> Mesh:
        m = Mesh(redis_server.url, tmp_path, **settings)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


@pytest.fixture
def pki(tmp_path):
    """A CA with a server certificate for 127.0.0.1/localhost and a client certificate, plus a
    client certificate from another CA (which the gateway must not trust)."""
    ca = Authority(tmp_path / "pki")
    stranger = Authority(tmp_path / "stranger", name="stranger-ca")

    class Pki:
        authority = ca
        server = ca.issue("gateway", server=True)
        client = ca.issue("client", server=False)
        worker = ca.issue("worker", server=False)
        foreign_client = stranger.issue("intruder", server=False)

        def gateway_env(self) -> dict[str, str]:
            return {"IMAGEMESH_TLS_CERT": str(self.server.cert), "IMAGEMESH_TLS_KEY": str(self.server.key),
                    "IMAGEMESH_TLS_CLIENT_CA": str(ca.ca_path)}

        def worker_env(self) -> dict[str, str]:
            return {"IMAGEMESH_TLS_CA": str(ca.ca_path), "IMAGEMESH_TLS_CERT": str(self.worker.cert),
                    "IMAGEMESH_TLS_KEY": str(self.worker.key)}

    return Pki()


def run_to_exit(module: str, env: dict[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run `python -m module` until it exits by itself (a process that must refuse to start)."""
    return subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=python_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def proc_status(pid: int, field: str) -> int:
    """A kB figure of /proc/<pid>/status (VmRSS, VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket LISTENing on `port`, from /proc/net/tcp and tcp6."""
    import ipaddress

    found = set()
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:
                continue
            raw = bytes.fromhex(addr)
            # /proc prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
            ip = ipaddress.ip_address(raw)
            found.add(str(getattr(ip, "ipv4_mapped", None) or ip))  # gRPC listens on ::ffff:127.0.0.1
    return found
