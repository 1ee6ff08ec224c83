"""The bench rig: one Redis server of our own, the fake provider server, and meshes of real
gateway / worker processes started with the test suite's helpers (tests.processes).

Every process started here is stopped by the `with` block that started it, even when a
scenario fails or runs out of time; a mesh always starts on a flushed Redis, so no scenario
sees another's queues, leases or batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis as sync_redis

from imagemesh.client import Client
from imagemesh.credentials import Sealer
from tests.conftest import RedisServer, python_env
from tests.fakes.provider_server import FakeProviderProcess
from tests.processes import ADMIN_KEY, CLIENT_KEY, SECRET_KEY, Mesh, Proc

__all__ = ["ADMIN_KEY", "CLIENT_KEY", "Rig", "FakeProvider", "key_id", "started_mesh"]


@dataclass
class Rig:
    """What every scenario gets: the Redis server, a scratch directory, the run's options."""

    redis: RedisServer
    scratch: Path
    quick: bool = False
    soak_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def flush(self) -> None:
        client = sync_redis.Redis.from_url(self.redis.url)
        try:
            client.flushall()
        finally:
            client.close()

    def log_dir(self, name: str) -> Path:
        d = self.scratch / name
        d.mkdir(parents=True, exist_ok=True)
        return d


def key_id(provider: str, token: str) -> str:
    """The key id (`provider:fingerprint`) the bench meshes give `token` (they share SECRET_KEY)."""
    return Sealer(SECRET_KEY).key_id(provider, token)


class FakeProvider:
    """The fake provider server as a process, with its `/_control` and `/_stats` over HTTP."""

    def __init__(self, latency: float = 0.0) -> None:
        self._proc = FakeProviderProcess("--latency", str(latency), env=python_env())

    def __enter__(self) -> "FakeProvider":
        self._proc.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._proc.__exit__(*exc)

    @property
    def url(self) -> str:
        return self._proc.url

    @property
    def pid(self) -> int:
        assert self._proc.proc is not None
        return self._proc.proc.pid

    def control(self, **spec) -> None:
        req = urllib.request.Request(self.url + "/_control", data=json.dumps(spec).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def reset(self, latency: float) -> None:
        """Forget stats and jobs, keep the latency knob."""
        self.control(reset=True)
        self.control(latency=latency)

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url + "/_stats", timeout=10) as r:
            return json.loads(r.read())


@contextlib.contextmanager
def mesh(rig: Rig, name: str, **settings: str) -> Iterator[Mesh]:
    """A mesh (no processes yet) on the flushed Redis; every process it starts is killed on exit.
    Outputs travel inline (storage off) unless the scenario says otherwise: scenario 8 measures
    the stores beside it, the others stay comparable with runs from before storage."""
    rig.flush()
    settings.setdefault("IMAGEMESH_STORAGE_URL", "none")
    m = Mesh(rig.redis_url, rig.log_dir(name), IMAGEMESH_LOG_LEVEL="WARNING", **settings)
    try:
        yield m
    finally:
        m.close()


async def start_gateways(m: Mesh, n: int, **extra: str) -> list[Proc]:
    return [await asyncio.to_thread(m.start_gateway, **extra) for _ in range(n)]


async def start_workers(m: Mesh, n: int, *, gateways: list[Proc] | None = None, **extra: str) -> list[Proc]:
    """n generation workers, spread round-robin over `gateways` (default: the first gateway)."""
    targets = gateways or [m.gateways[0]]
    procs = [await asyncio.to_thread(m.start_worker, "gen_worker", targets[i % len(targets)], **extra)
             for i in range(n)]
    await wait_for_workers(m, len(m.workers))
    return procs


async def wait_for_workers(m: Mesh, count: int, timeout: float = 30.0) -> None:
    """Wait until the gateways list `count` connected workers (a worker announces its health port
    before its stream to the gateway is up)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with Client(m.address, ADMIN_KEY) as admin:
        while True:
            listed = await admin.workers()
            if len(listed.workers) >= count:
                return
            if loop.time() > deadline:
                raise TimeoutError(f"only {len(listed.workers)} of {count} workers connected")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def started_mesh(rig: Rig, name: str, *, gateways: int = 1, workers: int = 2,
                       worker_settings: dict[str, str] | None = None,
                       **settings: str) -> AsyncIterator[Mesh]:
    with mesh(rig, name, **settings) as m:
        gws = await start_gateways(m, gateways)
        if workers:
            await start_workers(m, workers, gateways=gws, **(worker_settings or {}))
        yield m
