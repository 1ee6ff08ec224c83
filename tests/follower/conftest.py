"""Fixtures of the event-follower tests: batches written through the real batch scripts
(`gateway.batches.BatchStore`: the same Lua the dispatcher runs), gateways as real processes
(`tests.processes`), and the SeaweedFS S3 server of the storage tests."""

from __future__ import annotations

import grpc
import pytest

from gateway.batches import BatchStore, NewTask, batch_ref, task_id
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import imagemesh_pb2_grpc as pb_grpc
from tests.mesh.conftest import mesh_factory  # noqa: F401  (the same process fixtures)
from tests.processes import CLIENT_KEY
from tests.storage.conftest import seaweed  # noqa: F401  (the session's S3 server)

TENANT = "team-a"  # CLIENT_KEY's tenant (tests.processes)


def ref(batch_id: str, tenant: str = TENANT) -> str:
    """The mesh's name of `tenant`'s batch `batch_id` (batches the gateway serves are named so)."""
    return batch_ref(tenant, batch_id)


@pytest.fixture
def store(redis):
    return BatchStore(redis)


async def new_batch(store: BatchStore, batch_id: str, tasks: int, tenant: str = TENANT) -> None:
    """An accepted batch of `tasks` tasks, none queued: the test finishes them (`finish`)."""
    await store.reserve(batch_id, tenant, tasks, writer="w")
    await store.write_records(batch_id, [NewTask(i, f"t{i}.png") for i in range(tasks)])
    await store.commit(batch_id, "w", pb.Accepted(batch_id=batch_id,
                                                  task_ids=[task_id(batch_id, i) for i in range(tasks)]))


def result(batch_id: str, i: int, *, data: bytes = b"", state: int = pb.SUCCEEDED) -> pb.TaskResult:
    r = pb.TaskResult(task_index=i, task_id=task_id(batch_id, i), output_filename=f"t{i}.png", state=state,
                      provider="local", attempts=1, labels={"n": str(i)})
    if data:
        r.files.add(filename=f"t{i}.png", data=data, content_type="image/png")
    return r


async def finish(store: BatchStore, batch_id: str, *indexes: int, data: bytes = b"") -> None:
    """Record the tasks' results (FINISH), as the dispatcher does; the last one adds the summary."""
    await store.finish_many([(batch_id, i, "*", result(batch_id, i, data=data), False) for i in indexes])


async def log_ids(redis, batch_id: str) -> list[str]:
    return [raw.decode() for raw, _ in await redis.xrange(f"im:{{{batch_id}}}:ev")]


def api(address: str) -> tuple[grpc.aio.Channel, pb_grpc.ImageMeshStub]:
    channel = grpc.aio.insecure_channel(address)
    return channel, pb_grpc.ImageMeshStub(channel)


METADATA = (("authorization", f"Bearer {CLIENT_KEY}"),)


@pytest.fixture
async def follower_factory(redis_server, store):
    """EventFollowers on the session's Redis (its own settings each); stopped at the end."""
    from gateway.follower import EventFollower, FollowerSettings

    made = []

    def make(url: str | None = None, **settings) -> EventFollower:
        f = EventFollower(url or redis_server.url, store, FollowerSettings(**settings))
        f.start()
        made.append(f)
        return f

    yield make
    for f in made:
        await f.stop()


@pytest.fixture
async def gateway(redis_server, redis):
    """A gateway in this process (port 0, storage off), to look at its follower from the test."""
    from gateway.server import Gateway
    from gateway.settings import GatewaySettings
    from tests.processes import SECRET_KEY, api_keys_setting

    gw = Gateway(GatewaySettings(listen="127.0.0.1:0", health_port=-1, metrics_port=-1, redis_url=redis_server.url,
                                 api_keys=api_keys_setting(), secret_key=SECRET_KEY, storage_url="none"))
    await gw.start()
    yield gw
    await gw.stop()
