"""Storage grants (what a worker may write and read) and retention (expiry, bytes per tenant),
against a real Redis and a real directory store."""

from __future__ import annotations

import asyncio
import time

from gateway.grants import Grants
from gateway.retention import Retention
from imagemesh.storage.keys import attempt_prefix, batch_prefix, inputs_prefix, object_key


def test_a_grant_covers_its_own_attempt_only():
    grants = Grants("a secret key")
    mine = attempt_prefix("team-a", "b1", 3, 1)
    grant = grants.verify(grants.issue(write_prefix=mine, reads=["team-a/b1/0/1/in.png"], max_bytes=100, ttl=60))
    assert grant is not None and grant.max_bytes == 100
    assert grant.may_write(object_key(mine, "out.png"))
    assert not grant.may_write(object_key(attempt_prefix("team-a", "b1", 3, 2), "out.png")), "another attempt"
    assert not grant.may_write(object_key(attempt_prefix("team-a", "b1", 4, 1), "out.png")), "another task"
    assert not grant.may_write(mine + "0/x.png"), "a sibling prefix that merely starts the same"
    assert grant.may_read("team-a/b1/0/1/in.png") and not grant.may_read("team-a/b1/0/1/other.png")


def test_forged_tampered_foreign_and_expired_grants_are_refused():
    grants = Grants("a secret key")
    token = grants.issue(write_prefix="team-a/b1/0/1", reads=[], max_bytes=100, ttl=60)
    version, payload, signature = token.split(".")
    other = grants.issue(write_prefix="team-b/b9/0/1", reads=[], max_bytes=100, ttl=60).split(".")[1]
    assert grants.verify(f"{version}.{other}.{signature}") is None
    assert grants.verify(token[:-2] + "xx") is None
    assert grants.verify("garbage") is None
    assert Grants("another key").verify(token) is None
    assert grants.verify(grants.issue(write_prefix="team-a/b1/0/1", reads=[], max_bytes=1, ttl=-1)) is None
    assert Grants("a secret key").verify(token) is not None, "every gateway with the same key accepts it"


async def chunks(data: bytes):
    yield data


async def test_sweep_deletes_expired_groups_and_gives_the_bytes_back(redis, directory_store):
    retention = Retention(redis, retention=0.3)
    old_batch, live_batch = batch_prefix("team-a", "old"), batch_prefix("team-a", "live")
    upload = inputs_prefix("team-b", "u1")
    for group, size in ((old_batch, 1000), (upload, 500)):
        key = object_key(f"{group}/0/1" if "~inputs" not in group else group, "x.png")
        await directory_store.put(key, chunks(b"x" * size), max_bytes=size)
        await retention.record({group: size})
    await directory_store.put(object_key(f"{live_batch}/0/1", "x.png"), chunks(b"y"), max_bytes=1)
    await Retention(redis, retention=60).record({live_batch: 1})
    await retention.hold([old_batch, live_batch], 60)  # index entries already there are left as they are
    assert await retention.tenant_bytes("team-a") == 1001 and await retention.tenant_bytes("team-b") == 500
    await asyncio.sleep(0.4)
    assert await retention.sweep(directory_store) == 2
    assert await directory_store.keys("team-a/old") == [] and await directory_store.keys("team-b/~inputs") == []
    assert await directory_store.keys("team-a/live") == ["team-a/live/0/1/x.png"]
    assert await retention.tenant_bytes("team-a") == 1 and await retention.tenant_bytes("team-b") == 0
    assert await retention.sweep(directory_store) == 0


async def test_a_result_recorded_after_a_claim_keeps_its_group_for_a_new_retention(redis, directory_store):
    retention = Retention(redis, retention=0.2)
    group = batch_prefix("team-a", "late")
    await retention.record({group: 10})
    await asyncio.sleep(0.3)
    # A sweeper claims the group, then (before it forgets it) a late result is recorded.
    now = int(time.time() * 1000)
    claimed_until = now + 30_000
    claimed = await retention._claim(keys=[retention.keys[0]], args=[now, claimed_until, 10])
    assert [g.decode() for g in claimed] == [group]
    retention.retention = 60
    await retention.record({group: 5})
    assert await retention._forget(keys=retention.keys, args=[claimed_until, group, "team-a"]) == 0
    assert await retention.tenant_bytes("team-a") == 15
    assert await retention.expiry_ms(group) > (time.time() + 50) * 1000


async def test_the_first_result_replaces_a_placeholder_expiry_and_later_ones_only_extend_it(redis):
    retention = Retention(redis, retention=10)
    group = batch_prefix("team-a", "b1")
    await retention.hold([group], 600)
    assert await retention.expiry_ms(group) > (time.time() + 600) * 1000
    await retention.record({group: 5})
    first = await retention.expiry_ms(group)
    assert first < (time.time() + 11) * 1000, "the placeholder is replaced by retention from the result"
    await retention.hold([group], 600)
    assert await retention.expiry_ms(group) == first, "a placeholder never moves a recorded expiry"
    await asyncio.sleep(0.01)
    await retention.record({group: 5})
    assert await retention.expiry_ms(group) > first
    assert await retention.tenant_bytes("team-a") == 10


async def test_two_attempts_of_one_task_get_disjoint_targets_and_grants(redis, directory_store):
    from gateway.batches import BatchStore
    from gateway.outputs import Outputs, OutputSettings
    from imagemesh.v1 import imagemesh_pb2 as pb
    from imagemesh.v1 import worker_pb2 as wpb

    batches = BatchStore(redis)
    assert (await batches.reserve("b7", "team-a", 1, writer="w")).outcome == "write"
    grants = Grants("k")
    outputs = Outputs(store=directory_store, batches=batches, retention=Retention(redis), grants=grants,
                      settings=OutputSettings())
    task = pb.Task(output_filename="fox.png", generate=pb.GenerateSpec(prompt="x", num_outputs=2))
    first, second = (wpb.Assignment(output_filename="fox.png", generate=task.generate) for _ in range(2))
    await outputs.prepare(first, "team-a", "b7", 0, 1, task)
    await outputs.prepare(second, "team-a", "b7", 0, 2, task)
    assert [u.object for u in first.uploads] == ["team-a/b7/0/1/fox_1.png", "team-a/b7/0/1/fox_2.png"]
    assert [u.object for u in second.uploads] == ["team-a/b7/0/2/fox_1.png", "team-a/b7/0/2/fox_2.png"]
    assert not grants.verify(first.storage_token).may_write(second.uploads[0].object)
    assert not grants.verify(second.storage_token).may_write(first.uploads[0].object)
    # A result that names another attempt's object is refused before it is recorded.
    stolen = wpb.AttemptResult(state=pb.SUCCEEDED, files=[pb.OutputFile(object=first.uploads[0].object)])
    assert outputs.check("team-a", "b7", 0, 2, stolen) == {}
    assert stolen.state == pb.FAILED and not stolen.files and stolen.error.code == "INTERNAL"
