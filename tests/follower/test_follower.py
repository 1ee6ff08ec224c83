"""The event follower on a real Redis: one reader, many subscribers, hand-over without a gap or a
duplicate, bounded buffers, ends, and Redis restarts. Events are written by the real batch
scripts (FINISH appends results and, after the last, the summary)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import pytest

from gateway.batches import BadCursor
from gateway.follower import UnknownBatch
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.conftest import RedisServer
from tests.follower.conftest import finish, log_ids, new_batch


async def collect(events, into: list, *, pause: float = 0.0, rng: random.Random | None = None) -> list:
    async with contextlib.aclosing(events):
        async for e in events:
            into.append(pb.BatchEvent.FromString(e.wire))
            if pause and rng is not None:
                await asyncio.sleep(rng.random() * pause)
    return into


@pytest.mark.parametrize("seed", range(4))
async def test_late_subscribers_from_any_cursor_get_the_rest_of_the_log_once_in_order(
        redis, store, follower_factory, seed):
    """Subscribers join at random moments from random cursors while results are written; some
    read slowly. Tiny buffers, pages and read counts make every path run: the replay, the
    hand-over to the fan-out, leaving it when the buffer fills and joining it again. Each one
    gets exactly the log after its cursor, in order, ending with the summary."""
    rng = random.Random(seed)
    f = follower_factory(block_ms=500, count=3, page=4, buffer_events=5)
    b, tasks = f"bl{seed}", 60
    await new_batch(store, b, tasks)
    runs: list[tuple[str, list, asyncio.Task]] = []

    async def write() -> None:
        order = list(range(tasks))
        rng.shuffle(order)
        while order:
            k = rng.choice((1, 1, 2, 3))
            await finish(store, b, *order[:k])
            del order[:k]
            await asyncio.sleep(rng.random() * 0.004)

    async def subscribe() -> None:
        for _ in range(12):
            await asyncio.sleep(rng.random() * 0.03)
            ids = await log_ids(redis, b)
            cursor = rng.choice(["", *(ids if len(ids) < tasks + 2 else ids[:-1])])  # not the summary's
            got: list = []
            task = asyncio.create_task(collect(f.events(b, cursor), got, pause=rng.choice((0, 0.002)), rng=rng))
            runs.append((cursor, got, task))

    stalled = f.events(b)  # reads its first event, then nothing until every result is written
    stalled_got = [pb.BatchEvent.FromString((await anext(stalled)).wire)]
    await asyncio.gather(write(), subscribe())
    runs.append(("", stalled_got, asyncio.create_task(collect(stalled, stalled_got))))
    await asyncio.wait_for(asyncio.gather(*(t for _, _, t in runs)), 30)
    log = await log_ids(redis, b)
    assert len(log) == tasks + 2
    for cursor, got, _ in runs:
        expected = log[log.index(cursor) + 1:] if cursor else log
        assert [e.cursor for e in got] == expected, f"from {cursor or 'the start'}"
        assert got[-1].HasField("summary")
    assert f.followed == 0, "the summary unfollows the batch"
    assert f.detaches > 0, "the stalled reader left the fan-out and came back (the path is covered)"


async def test_a_new_batch_is_followed_at_once_not_after_the_block(store, follower_factory):
    """The follower blocks for 10 s on the batches it reads; following one more unblocks it
    (CLIENT UNBLOCK), so the new batch's next event arrives in milliseconds."""
    f = follower_factory(block_ms=10_000)
    await new_batch(store, "ba", 2)
    await new_batch(store, "bb", 2)
    first = f.events("ba")
    assert (await anext(first)).kind == b"accepted"
    await asyncio.sleep(0.2)  # the follower is now blocked in XREAD on ba alone
    second = f.events("bb")
    assert (await anext(second)).kind == b"accepted"
    t0 = time.monotonic()
    await finish(store, "bb", 0)
    entry = await asyncio.wait_for(anext(second), 5)
    took = time.monotonic() - t0
    assert entry.kind == b"result" and took < 1.0, took
    assert f.unblocks >= 1
    await first.aclose()
    await second.aclose()


async def test_a_slow_subscriber_holds_a_bounded_buffer_and_then_gets_everything(redis, store, follower_factory):
    """A client that stops reading while 200 results of 4 KB are written: its buffer never holds
    more than its bound (it leaves the fan-out instead); when it reads again it gets every event
    from its own cursor, in order, once. A reading subscriber of the same batch is unaffected.
    Reads of large entries ask for fewer at a time (about `read_bytes` per read)."""
    f = follower_factory(block_ms=500, buffer_events=16, buffer_bytes=32 * 1024, read_bytes=20_000)
    b, tasks = "bslow", 200
    await new_batch(store, b, tasks)
    slow = f.events(b)
    assert (await anext(slow)).kind == b"accepted"  # then it stops reading
    fast_got: list = []
    fast = asyncio.create_task(collect(f.events(b), fast_got))
    held, counts = 0, set()
    for i in range(tasks):
        await finish(store, b, i, data=bytes(4096))
        await asyncio.sleep(0)
        batch = f._batches.get(b)
        for sub in (batch.subscribers if batch else ()):
            assert len(sub.buffer) <= 16 and sub.size <= 32 * 1024 + 8192
            held = max(held, sub.size)
        counts.add(f._count)
    await asyncio.wait_for(fast, 10)
    assert f.detaches >= 1
    rest = [pb.BatchEvent.FromString(e.wire) async for e in slow]
    log = await log_ids(redis, b)
    assert [e.cursor for e in rest] == log[1:]
    assert [e.cursor for e in fast_got] == log
    assert min(counts) == 4, "about 20 KB of 4 KB entries per read"
    print(f"most bytes a subscriber held: {held}")


async def test_the_last_subscriber_leaving_unfollows_its_batch(store, follower_factory):
    f = follower_factory(block_ms=500)
    await new_batch(store, "bu", 3)
    a, b = f.events("bu"), f.events("bu")
    await anext(a)
    await anext(b)
    assert (f.followed, f.subscribers) == (1, 2)
    await a.aclose()
    assert (f.followed, f.subscribers) == (1, 1)
    await b.aclose()
    assert (f.followed, f.subscribers) == (0, 0)


async def test_cursors_and_visibility_are_answered_at_once(redis, store, follower_factory):
    f = follower_factory(block_ms=10_000)
    await new_batch(store, "bc", 1)
    await finish(store, "bc", 0)
    log = await log_ids(redis, "bc")
    t0 = time.monotonic()
    with pytest.raises(BadCursor, match="not a cursor"):
        await anext(f.events("bc", "garbage"))
    ms, _, _ = log[-1].partition("-")
    with pytest.raises(BadCursor, match="beyond"):
        await anext(f.events("bc", f"{int(ms) + 60_000}-0"))
    assert [e async for e in f.events("bc", log[-1])] == [], "the summary's cursor ends at once"
    with pytest.raises(UnknownBatch):
        await anext(f.events("bc", visible=lambda tenant: tenant == "someone-else"))
    with pytest.raises(UnknownBatch):
        await anext(f.events("b-missing", visible=lambda tenant: tenant is not None))
    assert [e.cursor.decode() async for e in f.events("bc", log[0])] == log[1:]
    assert time.monotonic() - t0 < 2.0 and f.followed == 0


async def test_an_expired_batch_ends_its_subscribers(redis, store, follower_factory):
    f = follower_factory(block_ms=200, expiry_check_ms=200)
    await new_batch(store, "bx", 2)
    events = f.events("bx")
    assert (await anext(events)).kind == b"accepted"
    await redis.delete("im:{bx}:ev", "im:{bx}:meta", "im:{bx}:tasks")  # what expiry does
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(events), 5)
    assert f.followed == 0


async def test_a_redis_restart_under_the_follower_loses_and_repeats_nothing(tmp_path, follower_factory):
    """Redis (with its append-only file) is killed and restarted while three subscribers follow a
    batch from different cursors: the follower reconnects (a new connection id) and resumes from
    its cursor; every subscriber gets each event once, in order."""
    import redis.asyncio as aioredis

    from gateway.batches import BatchStore

    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    r = aioredis.Redis.from_url(server.url)
    try:
        s = BatchStore(r)
        f = follower_factory(server.url, block_ms=300)
        b, tasks = "brestart", 30
        await new_batch(s, b, tasks)
        await finish(s, b, *range(5))
        ids = await log_ids(r, b)
        runs = [(c, []) for c in ("", ids[2], ids[-1])]
        tasks_ = [asyncio.create_task(collect(f.events(b, c), got)) for c, got in runs]
        await finish(s, b, *range(5, 10))
        await asyncio.sleep(0.3)
        before = f._client_id
        server.restart()
        for i in range(10, tasks):
            for _ in range(100):
                try:
                    await finish(s, b, i)
                    break
                except (ConnectionError, OSError, aioredis.RedisError):
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.01)
        await asyncio.wait_for(asyncio.gather(*tasks_), 30)
        log = await log_ids(r, b)
        assert len(log) == tasks + 2
        for cursor, got in runs:
            assert [e.cursor for e in got] == (log[log.index(cursor) + 1:] if cursor else log)
        assert f._client_id != before, "the follower reconnected"
    finally:
        await r.aclose()
        server.stop()


async def test_subscribers_end_with_the_error_when_redis_stays_away(tmp_path, follower_factory):
    """A short outage is waited out (the test above); a long one ends the streams with the Redis
    error (UNAVAILABLE for the client, which re-attaches elsewhere) instead of leaving them hang."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    from gateway.batches import BatchStore

    server = RedisServer(tmp_path)
    server.start()
    r = aioredis.Redis.from_url(server.url)
    try:
        f = follower_factory(server.url, block_ms=200, outage_s=1.0)
        await new_batch(BatchStore(r), "bgone", 2)
        events = f.events("bgone")
        assert (await anext(events)).kind == b"accepted"
        await asyncio.sleep(0.1)
        server.stop()
        t0 = time.monotonic()
        with pytest.raises(RedisError):
            await asyncio.wait_for(anext(events), 10)
        assert 1.0 <= time.monotonic() - t0 < 6 and f.followed == 0
    finally:
        await r.aclose()
        server.stop()
