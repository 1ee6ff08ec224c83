from __future__ import annotations

import pytest

from imagemesh.client import Client
from tests.processes import ADMIN_KEY, CLIENT_KEY, Mesh


@pytest.fixture
def mesh_factory(redis_server, tmp_path):
    """Make meshes on a flushed Redis; every process is killed when the test ends."""
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
def mesh(mesh_factory):
    """One gateway and two generation workers (local provider, no latency)."""
    m = mesh_factory(IMAGEMESH_CAPACITY="8")
    m.start_gateway()
    m.start_worker()
    m.start_worker()
    return m


@pytest.fixture
async def client(mesh):
    async with Client(mesh.address, CLIENT_KEY) as c:
        yield c


@pytest.fixture
async def admin(mesh):
    async with Client(mesh.address, ADMIN_KEY) as c:
        yield c


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory):
    """Randomly initialised weights in the exact formats the loaders read (not trained models)."""
    from enhance_worker.weights import write_random

    return write_random(tmp_path_factory.mktemp("weights"))
