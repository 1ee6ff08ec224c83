"""Every Lua script of a batch's record (gateway/batches.py), directly against a real Redis.

These scripts decide exactly-once: each test names the rule it proves.
"""

from __future__ import annotations

import re

import pytest

from gateway.batches import SCRIPTS, BatchStore, NewTask, task_id
from gateway.states import LUA_STATES
from imagemesh.v1 import imagemesh_pb2 as pb

B = "b-scripts"


@pytest.fixture
async def store(redis):
    return BatchStore(redis, retention=60, writer_ttl=0.5)


def result(i: int, state: int = pb.SUCCEEDED, note: str = "") -> pb.TaskResult:
    return pb.TaskResult(task_index=i, task_id=task_id(B, i), state=state, model=note)


async def events(redis, batch_id: str = B) -> list[tuple[str, dict]]:
    rows = await redis.xrange(f"im:{{{batch_id}}}:ev")
    return [(fields[b"k"].decode(), fields) for _, fields in rows]


async def accepted_batch(store: BatchStore, n: int, batch_id: str = B) -> str:
    r = await store.reserve(batch_id, "t", n, writer="w1")
    assert r.outcome == "write"
    await store.write_records(batch_id, [NewTask(i, f"f{i}.png") for i in range(n)])
    assert await store.commit(batch_id, "w1", pb.Accepted(batch_id=batch_id)) == 1
    return batch_id


async def field(redis, name: str, batch_id: str = B):
    v = await redis.hget(f"im:{{{batch_id}}}:tasks", name)
    return v.decode() if v is not None else None


# -- the states ----------------------------------------------------------------------------------
def test_lua_states_are_generated_from_the_proto_enum():
    for name, number in pb.TaskState.items():
        if name != "TASK_STATE_UNSPECIFIED":
            assert f"local {name} = {number}" in LUA_STATES
    for text in SCRIPTS.values():
        body = text[len(LUA_STATES):] if text.startswith(LUA_STATES) else text
        # No script compares a state with a bare number: it names it.
        assert not re.search(r"st\s*[<>=~]=?\s*[1-9]", body), body


# -- CREATE / RECORDS / COMMIT: accept-once ----------------------------------------------------
async def test_create_makes_one_writer_and_the_others_wait(store):
    first = await store.reserve(B, "t", 2, writer="w1")
    second = await store.reserve(B, "t", 2, writer="w2")
    assert first.outcome == "write" and second.outcome == "busy" and second.wait_ms > 0


async def test_create_lets_a_writer_take_over_once_the_first_one_is_past_its_deadline(store, redis):
    await store.reserve(B, "t", 2, writer="w1")
    await redis.hset(f"im:{{{B}}}:meta", "writer_until", 1)  # w1 crashed long ago
    assert (await store.reserve(B, "t", 2, writer="w2")).outcome == "write"
    await store.write_records(B, [NewTask(0, "a"), NewTask(1, "b")])
    assert await store.commit(B, "w1", pb.Accepted(batch_id=B)) == -1, "the old writer may not commit"
    assert await store.commit(B, "w2", pb.Accepted(batch_id=B)) == 1
    assert [k for k, _ in await events(redis)] == ["accepted"]


async def test_create_refuses_another_tenant_and_other_tasks_under_the_same_id(store):
    await store.reserve(B, "t", 1, writer="w1", digest="d1")
    assert (await store.reserve(B, "other", 1, writer="w2", digest="d1")).outcome == "foreign"
    assert (await store.reserve(B, "t", 1, writer="w2", digest="d2")).outcome == "mismatch"


async def test_an_accepted_batch_is_answered_accepted_and_commit_is_once(store, redis):
    await accepted_batch(store, 1)
    assert (await store.reserve(B, "t", 1, writer="w9")).outcome == "accepted"
    assert await store.commit(B, "w1", pb.Accepted(batch_id=B)) == 0
    assert [k for k, _ in await events(redis)] == ["accepted"]


async def test_records_never_reset_a_task(store, redis):
    await accepted_batch(store, 1)
    assert await store.finish_many([(B, 0, "1", result(0), False)]) == [1]
    await store.write_records(B, [NewTask(0, "again.png")])
    assert await field(redis, "0:st") == str(pb.SUCCEEDED)
    assert await field(redis, "0:fn") == "f0.png"


async def test_results_recorded_before_commit_come_right_after_accepted(store, redis):
    await store.reserve(B, "t", 2, writer="w1")
    await store.write_records(B, [NewTask(0, "a"), NewTask(1, "b")])
    assert await store.finish_many([(B, 1, "1", result(1, pb.FAILED), False)]) == [1]
    assert await events(redis) == [], "nothing is logged before `accepted`"
    await store.commit(B, "w1", pb.Accepted(batch_id=B))
    assert [k for k, _ in await events(redis)] == ["accepted", "result"]
    await store.finish_many([(B, 0, "1", result(0), False)])
    kinds = [k for k, _ in await events(redis)]
    assert kinds == ["accepted", "result", "result", "summary"]
    summary = (await events(redis))[-1][1]
    assert summary[b"ok"] == b"1" and summary[b"failed"] == b"1"


# -- START: one entry runs an attempt ------------------------------------------------------------
async def test_start_lets_one_entry_run_an_attempt(store, redis):
    await accepted_batch(store, 1)
    assert await store.start_many([(B, 0, 1, "1-0"), (B, 0, 1, "2-0"), (B, 0, 1, "1-0")]) == [True, False, True]
    assert await field(redis, "0:st") == str(pb.RUNNING)


async def test_start_refuses_a_final_task_and_a_stale_attempt(store):
    await accepted_batch(store, 2)
    await store.finish_many([(B, 0, "1", result(0), False)])
    assert await store.start_many([(B, 0, 1, "1-0"), (B, 1, 2, "1-1")]) == [False, False]


# -- FINISH: exactly one result ------------------------------------------------------------------
async def test_finish_takes_only_the_first_report_of_a_live_attempt(store, redis):
    await accepted_batch(store, 1)
    won = await store.finish_many([(B, 0, "2", result(0), False), (B, 0, "1", result(0, note="a"), False),
                                   (B, 0, "1", result(0, note="b"), False), (B, 0, "*", result(0), False)])
    assert won == [0, 1, 0, 0]
    results = [pb.TaskResult.FromString(f[b"d"]) for k, f in await events(redis) if k == "result"]
    assert [r.model for r in results] == ["a"]


async def test_finish_refuses_a_state_that_is_not_final(store):
    await accepted_batch(store, 1)
    with pytest.raises(Exception, match="not final"):
        await store.finish_many([(B, 0, "1", result(0, pb.RUNNING), False)])


async def test_finish_retire_only_stops_a_raced_attempt_while_another_lives(store, redis):
    await accepted_batch(store, 1)
    await store.start_many([(B, 0, 1, "1-0")])
    hedge, = await store.next_attempts([(B, 0, 1, True, False, "1-0")])
    assert await store.finish_many([(B, 0, "1", result(0, pb.FAILED), True)]) == [1], \
        "a hedge that never started holds nothing up"
    await redis.delete(f"im:{{{B}}}:ev", f"im:{{{B}}}:tasks", f"im:{{{B}}}:meta")

    await accepted_batch(store, 1)
    await store.start_many([(B, 0, 1, "1-0")])
    hedge, = await store.next_attempts([(B, 0, 1, True, False, "1-0")])
    assert await store.start_many([(B, 0, hedge, "9-0")]) == [True]
    assert await store.finish_many([(B, 0, "1", result(0, pb.FAILED), True)]) == [2]
    assert await field(redis, "0:st") == str(pb.RUNNING), "the task goes on through the hedge"
    assert await store.finish_many([(B, 0, str(hedge), result(0), True)]) == [1]


# -- NEXT: a requeue happens once ----------------------------------------------------------------
async def test_next_is_idempotent_per_replaced_attempt(store, redis):
    await accepted_batch(store, 1)
    await store.start_many([(B, 0, 1, "1-0")])
    first = await store.next_attempts([(B, 0, 1, False, False, "1-0")])
    again = await store.next_attempts([(B, 0, 1, False, False, "1-0")])
    assert first == again == [2]
    assert await field(redis, "0:att") == "2" and await field(redis, "0:live") == "1"
    assert await field(redis, "0:st") == str(pb.QUEUED)
    assert await store.finish_many([(B, 0, "1", result(0), False)]) == [0], "the replaced attempt is stale"


async def test_next_refuses_a_duplicate_entry_of_a_started_attempt(store):
    await accepted_batch(store, 1)
    await store.start_many([(B, 0, 1, "1-0")])
    assert await store.next_attempts([(B, 0, 1, False, False, "5-0")]) == [0]
    assert await store.next_attempts([(B, 0, 1, False, False, "1-0")]) == [2]


async def test_next_refuses_a_final_task(store):
    await accepted_batch(store, 1)
    await store.finish_many([(B, 0, "1", result(0), False)])
    assert await store.next_attempts([(B, 0, 1, False, False, "1-0")]) == [0]


async def test_next_retire_stops_only_this_attempt_while_another_lives(store, redis):
    await accepted_batch(store, 1)
    await store.start_many([(B, 0, 1, "1-0")])
    hedge, = await store.next_attempts([(B, 0, 1, True, False, "1-0")])
    await store.start_many([(B, 0, hedge, "2-0")])
    assert await store.next_attempts([(B, 0, 1, False, True, "1-0")]) == [-1]
    assert await field(redis, "0:live") == "1"


# -- ACCEPT_TASK / CLOSE / CANCEL ----------------------------------------------------------------
async def test_session_tasks_are_logged_once_and_a_closed_session_takes_none(store, redis):
    r = await store.reserve(B, "t", 0, writer="w", session=True)
    assert r.outcome == "write"
    await store.commit(B, "w", pb.Accepted(batch_id=B))
    await store.write_records(B, [NewTask(0, "a")])
    await store.finish_many([(B, 0, "*", result(0), False)])       # a fast result, before acceptance
    assert await store.accept_task(B, 0) == 1
    assert await store.accept_task(B, 0) == 1                       # again: nothing more logged
    await store.write_records(B, [NewTask(1, "b")])
    await store.close(B)
    assert await store.accept_task(B, 1) == 0
    assert await field(redis, "1:st") == str(pb.CANCELLED), "a task never accepted never runs"
    assert [k for k, _ in await events(redis)] == ["accepted", "task_accepted", "result", "summary"]


async def test_cancel_finishes_every_unfinished_task_at_once_and_counts_them_by_pool(store, redis):
    await store.reserve(B, "t", 3, writer="w")
    await store.write_records(B, [NewTask(0, "a"), NewTask(1, "b", pool="enhance"), NewTask(2, "c")])
    await store.commit(B, "w", pb.Accepted(batch_id=B))
    await store.finish_many([(B, 0, "1", result(0), False)])
    assert await store.cancel(B) == {"generate": 1, "enhance": 1}
    assert await store.cancel(B) == {"generate": 0, "enhance": 0}
    kinds = [k for k, _ in await events(redis)]
    assert kinds == ["accepted", "result", "result", "result", "summary"]


async def test_a_dedup_leaders_final_result_is_kept_for_its_followers(store):
    await store.reserve(B, "t", 1, writer="w")
    await store.write_records(B, [NewTask(0, "a", dedup="h1")])
    await store.commit(B, "w", pb.Accepted(batch_id=B))
    assert await store.final_result(B, 0) is None
    await store.finish_many([(B, 0, "1", result(0, note="kept"), False)])
    kept = await store.final_result(B, 0)
    assert kept is not None and kept.model == "kept"


# -- cursors -------------------------------------------------------------------------------------
async def test_cursors_are_checked_at_once(store, redis):
    from gateway.batches import BadCursor

    await accepted_batch(store, 1)
    (last, _), = await redis.xrange(f"im:{{{B}}}:ev")
    await store.check_cursor(B, last.decode())
    for bad in ("garbage", "1-2-3", "1700000000000-0\n"):
        with pytest.raises(BadCursor, match="not a cursor"):
            await store.check_cursor(B, bad)
    ms, _, seq = last.decode().partition("-")
    with pytest.raises(BadCursor, match="beyond"):
        await store.check_cursor(B, f"{int(ms) + 60_000}-0")
