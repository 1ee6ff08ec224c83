"""Readiness means "able to work": a worker is SERVING only while connected to a gateway, a
worker whose key the gateway refuses exits with one line, and the gateway's readiness follows
its Redis (a real redis-server stopped and started again). `liveness` stays SERVING throughout:
probes that restart a process can't bring its gateway or Redis back."""

from __future__ import annotations

import pytest

from tests.conftest import RedisServer, free_port
from tests.processes import CLIENT_KEY

from . import health
from .conftest import run_to_exit


@pytest.mark.timeout(120)
def test_worker_is_ready_only_while_connected_to_a_gateway(mesh_factory):
    m = mesh_factory()
    port = free_port()
    m.start_gateway(IMAGEMESH_LISTEN=f"127.0.0.1:{port}")
    worker = m.start_worker()
    probe = int(worker.values["HEALTH_PORT"])
    health.wait_for(probe, "SERVING")

    m.gateways[0].kill()  # the gateway is gone: the worker can do nothing
    health.wait_for(probe, "NOT_SERVING", timeout=10)
    assert health.status(probe, "liveness") == "SERVING"  # but it runs: liveness probes pass

    m.start_gateway(IMAGEMESH_LISTEN=f"127.0.0.1:{port}")  # back on the same address
    health.wait_for(probe, "SERVING", timeout=20)
    assert worker.proc.poll() is None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("key, code", [("not-a-key-at-all", "UNAUTHENTICATED"), (CLIENT_KEY, "PERMISSION_DENIED")])
def test_worker_whose_key_is_refused_exits_with_one_line(mesh_factory, key, code):
    m = mesh_factory()
    m.start_gateway()
    done = run_to_exit("gen_worker", m.env(IMAGEMESH_GATEWAY=m.address, IMAGEMESH_API_KEY=key), timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("imagemesh-gen-worker: error:") and code in last and "IMAGEMESH_API_KEY" in last, last
    assert key not in done.stderr  # the key itself is never printed
    assert done.stdout.count("HEALTH_PORT=") == 1  # it was up, never ready


@pytest.mark.timeout(120)
def test_gateway_readiness_follows_redis(mesh_factory, tmp_path):
    (tmp_path / "own-redis").mkdir()
    redis = RedisServer(tmp_path / "own-redis")
    redis.start()
    try:
        m = mesh_factory(IMAGEMESH_REDIS_URL=redis.url)
        gateway = m.start_gateway()
        api = int(gateway.values["GATEWAY"].rpartition(":")[2])
        health.wait_for(api, "SERVING")
        health.wait_for(api, "SERVING", service="imagemesh.v1.ImageMesh")

        redis.stop()
        health.wait_for(api, "NOT_SERVING", timeout=15)
        probes = int(gateway.announced("HEALTH_PORT"))  # the plaintext port kubelet probes
        for port in (api, probes):
            health.wait_for(port, "NOT_SERVING", timeout=15)
            assert health.status(port, "imagemesh.v1.ImageMesh") == "NOT_SERVING"
            assert health.status(port, "liveness") == "SERVING"

        redis.start()  # same port, empty
        for port in (api, probes):
            health.wait_for(port, "SERVING", timeout=15)
            assert health.status(port, "liveness") == "SERVING"
        assert gateway.proc.poll() is None
    finally:
        redis.stop()
