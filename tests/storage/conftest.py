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
