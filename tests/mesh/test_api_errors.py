"""Statuses of the public API: authentication, roles, whole-request errors, lookups."""

from __future__ import annotations

import grpc
import pytest

from imagemesh.client import Client, generate
from tests.processes import OTHER_CLIENT_KEY


async def first_error(events) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in events:
            pass
    return info.value


async def test_no_key_or_wrong_key_is_unauthenticated(mesh):
    for key in ("", "not-a-key"):
        async with Client(mesh.address, key, reattach_attempts=0) as c:
            err = await first_error(c.submit([generate("x")]))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_client_key_on_admin_rpc_is_permission_denied(client):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.keys()
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("tasks, field, limit", [
    ([], "tasks", "at least 1"),
    ([generate("x")] * 1001, "tasks", "1000"),
    ([generate("p" * 4001)], "prompt", "4000"),
    ([generate("x", providers=["nope"])], "providers", "unknown provider"),
    ([generate("x", num_outputs=9)], "num_outputs", "1..8"),
])
async def test_bad_requests_are_invalid_argument_naming_field_and_limit(client, tasks, field, limit):
    err = await first_error(client.submit(tasks))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.details() and limit in err.details()


async def test_unknown_batch_is_not_found_and_other_tenants_batches_are_invisible(mesh, client):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.status("b-does-not-exist")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    events = [e async for e in client.submit([generate("mine", width=16, height=16)])]
    batch_id = events[0].batch_id
    async with Client(mesh.address, OTHER_CLIENT_KEY) as other:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await other.status(batch_id)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_get_watch_and_resubmit_by_batch_id(client):
    tasks = [generate(f"t{i}", f"t{i}.png", width=16, height=16) for i in range(5)]
    first = [e async for e in client.submit(tasks, batch_id="batch-resubmit-1")]
    status = await client.status("batch-resubmit-1")
    assert (status.total, status.succeeded, status.done) == (5, 5, True)
    # Resubmitting the same id returns the same batch: same events, nothing re-runs.
    again = [e async for e in client.submit(tasks, batch_id="batch-resubmit-1")]
    assert [e.cursor for e in again] == [e.cursor for e in first]
    # WatchBatch replays everything after a cursor.
    cursor = first[2].cursor
    replay = [e async for e in client.watch("batch-resubmit-1", cursor)]
    assert [e.cursor for e in replay] == [e.cursor for e in first[3:]]


async def test_list_workers_shows_every_replicas_workers(mesh_factory):
    import asyncio

    from tests.processes import ADMIN_KEY

    m = mesh_factory(IMAGEMESH_CAPACITY="3")
    g1, g2 = m.start_gateway(), m.start_gateway()
    m.start_worker(gateway=g1)
    m.start_worker(gateway=g2)
    async with Client(g1.values["GATEWAY"], ADMIN_KEY) as admin:
        for _ in range(50):
            workers = (await admin.workers()).workers
            if len(workers) == 2:
                break
            await asyncio.sleep(0.1)
    assert sorted(w.worker_id for w in workers) == ["gen_worker-0", "gen_worker-1"]
    assert {w.capacity for w in workers} == {3} and len({w.gateway for w in workers}) == 2


async def test_batch_ids_are_per_tenant_so_another_tenants_id_is_neither_refused_nor_revealed(mesh, client):
    """Before: batch ids were global, so a second tenant submitting an id the first had used got
    PERMISSION_DENIED ("belongs to another caller"): an oracle for other tenants' ids, and a
    batch it could not submit. Now each tenant has its own namespace: both run, each sees only
    its own batch under the same id, and resubmitting still returns the tenant's own batch."""
    mine = [e async for e in client.submit([generate("mine", width=16, height=16)], batch_id="shared-id-1")]
    async with Client(mesh.address, OTHER_CLIENT_KEY) as other:
        theirs = [e async for e in other.submit([generate("theirs", width=16, height=16)] * 2, batch_id="shared-id-1")]
        assert theirs[0].batch_id == "shared-id-1" and theirs[-1].summary.succeeded == 2
        assert (await other.status("shared-id-1")).total == 2
        assert [e.cursor for e in await collect(other.watch("shared-id-1"))] == [e.cursor for e in theirs]
    assert mine[0].batch_id == "shared-id-1" and mine[-1].summary.succeeded == 1
    assert (await client.status("shared-id-1")).total == 1
    assert not set(mine[0].accepted.task_ids) & set(theirs[0].accepted.task_ids)
    again = [e async for e in client.submit([generate("mine", width=16, height=16)], batch_id="shared-id-1")]
    assert [e.cursor for e in again] == [e.cursor for e in mine], "resubmitting returns the tenant's own batch"


async def collect(events) -> list:
    return [e async for e in events]
