"""Fixtures of the storage tests: a real S3 server (SeaweedFS) for the session, and both stores.

Each test gets its own bucket prefix, so tests never see each other's objects.
"""

from __future__ import annotations

import secrets

import pytest

from imagemesh.storage import DirectoryStore
from tests.storage.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedFS

BUCKET = "imagemesh-test"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    server = SeaweedFS(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()


def s3_settings(seaweed: SeaweedFS, prefix: str) -> dict[str, str]:
    """The gateway settings (environment) that put outputs in the test bucket under `prefix`."""
    return {"IMAGEMESH_STORAGE_URL": f"s3://{BUCKET}/{prefix}", "IMAGEMESH_STORAGE_ENDPOINT": seaweed.endpoint,
            "IMAGEMESH_STORAGE_ACCESS_KEY_ID": ACCESS_KEY, "IMAGEMESH_STORAGE_SECRET_ACCESS_KEY": SECRET_KEY}


@pytest.fixture
def s3_store(seaweed):
    from imagemesh.storage.s3 import S3Store

    return S3Store(BUCKET, prefix="t" + secrets.token_hex(4), endpoint=seaweed.endpoint,
                   access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)


@pytest.fixture
def directory_store(tmp_path):
    return DirectoryStore(tmp_path / "store")


@pytest.fixture(params=["directory", "s3"])
def store(request):
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def mesh_factory(redis_server, tmp_path):
    """Meshes on a flushed Redis; every process is killed when the test ends."""
    import redis as sync_redis

    from tests.processes import Mesh

    sync_redis.Redis.from_url(redis_server.url).flushall()
    made: list[Mesh] = []

    def make(**settings) -> Mesh:
        m = Mesh(redis_server.url, tmp_path, **settings)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


@pytest.fixture(params=["directory", "s3"])
def backend(request, tmp_path):
    """(name, gateway settings, the store itself) for each backend."""
    if request.param == "directory":
        root = tmp_path / "store"
        return "directory", {"IMAGEMESH_STORAGE_URL": str(root)}, DirectoryStore(root)
    from imagemesh.storage.s3 import S3Store

    seaweed = request.getfixturevalue("seaweed")
    prefix = "m" + secrets.token_hex(4)
    store = S3Store(BUCKET, prefix=prefix, endpoint=seaweed.endpoint, access_key_id=ACCESS_KEY,
                    secret_access_key=SECRET_KEY)
    return "s3", s3_settings(seaweed, prefix), store
