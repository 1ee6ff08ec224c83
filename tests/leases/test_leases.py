"""Behaviour of LeaseBook against a real Redis, in one process (several books = several holders)."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from imagemesh import metrics
from imagemesh.leases import LeaseBook
from tests.conftest import RedisServer
from tests.leases.conftest import MJR, TTL, eventually

KEY = "replicate:fp01"


async def test_grants_up_to_the_limit_and_fences_increase(book_factory):
    book = await book_factory(default_limit=8)
    first = await book.try_acquire(KEY, 10)
    assert len(first) == 8
    assert await book.try_acquire(KEY) == []
    await book.release(first[:1])
    again = await book.try_acquire(KEY, 3)
    assert len(again) == 1
    fences = [lease.fence for lease in first + again]
    assert fences == sorted(fences) and len(set(fences)) == len(fences)
    state = await book.state(KEY)
    assert (state.limit, state.in_use, state.waiting) == (8, 8, 0)
    assert {i.lease_id for i in state.leases} == {lease.lease_id for lease in first[1:] + again}


async def test_fifo_order_of_grants_across_waiters(book_factory):
    holder = await book_factory("holder", default_limit=1)
    waiters = [await book_factory(f"waiter-{i}", default_limit=1) for i in range(5)]
    held = await holder.try_acquire(KEY)
    order: list[int] = []

    async def wait(i: int) -> None:
        leases = await waiters[i].acquire(KEY)
        order.append(i)
        await waiters[i].release(leases)

    tasks = []
    for i in (3, 0, 4, 1, 2):  # line up in this order, one ticket after the other
        tasks.append(asyncio.create_task(wait(i)))
        await eventually(lambda n=len(tasks): _waiting_is(holder, n))
    await holder.release(held)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == [3, 0, 4, 1, 2]


async def _waiting_is(book: LeaseBook, n: int) -> bool:
    return (await book.state(KEY)).waiting == n


async def test_try_acquire_does_not_jump_the_line(book_factory):
    a = await book_factory("a", default_limit=2)
    b = await book_factory("b", default_limit=2)
    held = await a.try_acquire(KEY, 2)
    waiter = asyncio.create_task(b.acquire(KEY, 1))
    await eventually(lambda: _waiting_is(a, 1))
    await a.release(held[:1])
    assert await a.try_acquire(KEY) == []   # the freed slot is the waiter's
    assert len(await asyncio.wait_for(waiter, 2)) == 1


async def test_limit_change_takes_effect_on_the_next_grant(book_factory):
    # long ticket refresh: only the wake-up of set_limit can serve the waiter in time
    a = await book_factory("a", default_limit=2, ticket_ttl=30)
    b = await book_factory("b", default_limit=2, ticket_ttl=30)
    held = await a.try_acquire(KEY, 2)
    waiter = asyncio.create_task(b.acquire(KEY, 1))
    await eventually(lambda: _waiting_is(a, 1))
    t0 = time.monotonic()
    await a.set_limit(KEY, 3)
    held += await asyncio.wait_for(waiter, 1)
    assert time.monotonic() - t0 < 0.5
    await a.set_limit(KEY, 1)
    await a.release(held[:2])
    assert await a.try_acquire(KEY) == []          # 1 in use, limit 1
    await a.release(held[2:])
    assert len(await a.try_acquire(KEY, 5)) == 1
    assert (await b.state(KEY)).limit == 1          # every book reads the same limit


async def test_unlimited_key_never_refuses(book_factory):
    book = await book_factory(default_limit=0)
    assert len(await book.try_acquire(KEY, 50)) == 50
    assert (await book.state(KEY)).in_use == 50


async def test_two_keys_do_not_slow_each_other(book_factory):
    book = await book_factory(default_limit=lambda k: 2 if k.startswith("slow") else 8)

    async def job(key: str) -> None:
        leases = await book.acquire(key)
        await asyncio.sleep(0.05)
        await book.release(leases)

    async def run(key: str, n: int) -> float:
        t0 = time.monotonic()
        await asyncio.gather(*(job(key) for _ in range(n)))
        return time.monotonic() - t0

    slow, fast = await asyncio.gather(run("slow:fp", 20), run("fast:fp", 40))
    # ideal: slow 10 rounds (0.5 s), fast 5 rounds (0.25 s)
    assert slow >= 0.5
    assert fast < 0.4, f"fast key took {fast:.3f} s beside a saturated key"


async def test_hand_off_wakes_the_waiter_without_polling(book_factory):
    # tickets refreshed only every 10 s: a grant within ms can only come from the wake-up
    a = await book_factory("a", default_limit=1, ticket_ttl=30)
    b = await book_factory("b", default_limit=1, ticket_ttl=30)
    latencies = []
    held = await a.try_acquire(KEY)
    for _ in range(20):
        waiter = asyncio.create_task(b.acquire(KEY))
        await eventually(lambda: _waiting_is(a, 1))
        t0 = time.perf_counter()
        await a.release(held)
        got = await asyncio.wait_for(waiter, 2)
        latencies.append(time.perf_counter() - t0)
        await b.release(got)
        held = await a.try_acquire(KEY)
    assert statistics.median(latencies) < 0.05, latencies
    assert max(latencies) < 1.0


async def test_zombie_stays_counted_until_max_job_runtime(book_factory):
    a = await book_factory("a", default_limit=1)
    b = await book_factory("b", default_limit=1)
    [lease] = await a.try_acquire(KEY)           # never renewed: its holder "stopped"
    t0 = time.monotonic()
    await asyncio.sleep(TTL + 0.2)
    state = await b.state(KEY)
    assert state.in_use == 1 and state.leases[0].zombie
    assert await b.try_acquire(KEY) == []
    got = await asyncio.wait_for(b.acquire(KEY), MJR + 2)
    waited = time.monotonic() - t0
    assert MJR - 0.1 <= waited <= MJR + 0.5, waited  # woken at the hard end, not later
    assert got[0].fence > lease.fence


async def test_releasing_a_zombie_frees_its_slot_at_once(book_factory):
    a = await book_factory("a", default_limit=1)
    [lease] = await a.try_acquire(KEY)
    await asyncio.sleep(TTL + 0.1)
    await a.release([lease])                     # the job is known finished
    assert len(await a.try_acquire(KEY)) == 1


async def test_renew_pushes_the_deadline_and_reports_lost_leases(book_factory):
    book = await book_factory()
    leases = await book.try_acquire(KEY, 2)
    await asyncio.sleep(0.1)
    renewed, lost = await book.renew(leases)
    assert lost == [] and [r.lease_id for r in renewed] == [lease.lease_id for lease in leases]
    assert all(r.deadline > lease.deadline for r, lease in zip(renewed, leases))
    await book.release(leases[:1])
    renewed, lost = await book.renew(leases)
    assert lost[0] is leases[0] and [r.lease_id for r in renewed] == [leases[1].lease_id]


async def test_deadline_counts_from_the_send_minus_margin(book_factory):
    book = await book_factory(ttl=2.0, margin=0.5)
    before = time.monotonic()
    [lease] = await book.try_acquire(KEY)
    after = time.monotonic()
    assert before + 1.5 <= lease.deadline <= after + 1.5


async def test_renewal_of_many_keys_is_one_round_trip(book_factory, redis):
    book = await book_factory()
    leases = [lease for k in range(5) for lease in await book.try_acquire(f"p:k{k}", 2)]
    await book.renew(leases)  # scripts loaded
    before = await _evalsha_calls(redis)
    renewed, lost = await book.renew(leases)
    assert len(renewed) == 10 and not lost
    assert await _evalsha_calls(redis) - before == 5  # one script call per key, pipelined


async def _evalsha_calls(redis) -> int:
    return (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)


async def test_cancelled_acquire_leaves_nothing_behind(book_factory):
    a = await book_factory("a", default_limit=1)
    b = await book_factory("b", default_limit=1)
    held = await a.try_acquire(KEY)
    waiter = asyncio.create_task(b.acquire(KEY))
    await eventually(lambda: _waiting_is(a, 1))
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await eventually(lambda: _waiting_is(a, 0))
    await a.release(held)
    assert len(await a.try_acquire(KEY)) == 1


async def test_cancel_racing_a_grant_leaves_nothing_behind(book_factory):
    a = await book_factory("a", default_limit=1)
    b = await book_factory("b", default_limit=1)
    for i in range(30):
        held = await a.try_acquire(KEY)
        assert held, f"round {i}: the slot was not free"
        waiter = asyncio.create_task(b.acquire(KEY))
        await eventually(lambda: _waiting_is(a, 1))
        await a.release(held)
        await asyncio.sleep(i * 0.0001)       # cancel around the moment of the grant
        waiter.cancel()
        try:
            got = await waiter
            await b.release(got)              # the grant won: an ordinary lease
        except asyncio.CancelledError:
            pass
        await eventually(lambda: _empty(a))


async def _empty(book: LeaseBook) -> bool:
    s = await book.state(KEY)
    return s.in_use == 0 and s.waiting == 0


async def test_acquire_timeout_leaves_nothing_behind(book_factory):
    book = await book_factory(default_limit=1)
    held = await book.try_acquire(KEY)
    with pytest.raises(TimeoutError):
        await book.acquire(KEY, timeout=0.2)
    await eventually(lambda: _waiting_is(book, 0))
    assert len(held) == 1


async def test_a_dead_waiters_ticket_expires(book_factory, redis):
    a = await book_factory("a", default_limit=1)
    b = await book_factory("b", default_limit=1, ticket_ttl=30)
    held = await a.try_acquire(KEY)
    # a waiter whose process died: a ticket that nobody refreshes (ticket ttl = TTL)
    dead = LeaseBook(redis, holder="dead", ttl=TTL, margin=0.3, max_job_runtime=MJR, default_limit=1)
    await dead._ask(KEY, "deadbeefdeadbeef", 1, dead.channel, time.monotonic())
    waiter = asyncio.create_task(b.acquire(KEY))
    await eventually(lambda: _waiting_is(a, 2))
    t0 = time.monotonic()
    await a.release(held)
    await asyncio.wait_for(waiter, TTL + 2)
    assert time.monotonic() - t0 <= TTL + 0.5  # the dead ticket went at its expiry, not later


async def test_lost_redis_state_quarantines_and_live_holders_readopt(book_factory, redis):
    a = await book_factory("a", default_limit=4)
    held = await a.try_acquire(KEY, 2)
    await redis.flushall()                     # Redis lost everything (restart without AOF)
    assert await a.try_acquire(KEY) == []      # fail closed: quarantine
    renewed, lost = await a.renew(held)
    assert lost == [] and len(renewed) == 2    # re-adopted
    newcomer = await book_factory("new", default_limit=4)
    assert await newcomer.try_acquire(KEY) == []   # the quarantine holds for every process
    state = await newcomer.state(KEY)
    assert state.quarantined and state.in_use == 2
    assert MJR - 0.5 < state.quarantine_ms / 1000 <= MJR

    async def keep_renewing() -> None:        # the live holder renews on its tick
        nonlocal held
        while True:
            await asyncio.sleep(TTL / 3)
            held, _lost = await a.renew(held)

    renewing = asyncio.create_task(keep_renewing())
    got = await asyncio.wait_for(newcomer.acquire(KEY, 4), MJR + 2)
    renewing.cancel()
    assert len(got) == 2 and len(held) == 2    # the adopted leases still count
    assert min(g.fence for g in got) > max(h.fence for h in held)
    assert not (await a.state(KEY)).quarantined


async def test_redis_unreachable_fails_closed(tmp_path, book_factory):
    server = RedisServer(tmp_path)
    server.start()
    client = aioredis.Redis.from_url(server.url, socket_timeout=1.0, socket_connect_timeout=0.5)
    try:
        book = await book_factory("a", client=client, default_limit=4)
        held = await book.try_acquire(KEY)
        server.stop()
        with pytest.raises(RedisError):
            await book.try_acquire(KEY)
        assert metrics.REDIS_UP._value.get() == 0
        with pytest.raises(RedisError):
            await book.renew(held)
        with pytest.raises(TimeoutError):
            await book.acquire(KEY, timeout=0.5)
    finally:
        server.stop()
        await client.aclose()


async def test_handover_gives_a_finished_slot_straight_back_when_nobody_else_waits(book_factory):
    book = await book_factory("gw-a", default_limit=2)
    held = await book.try_acquire(KEY, 2)
    kept = await book.handover(held[:1])
    assert len(kept) == 1 and kept[0].lease_id != held[0].lease_id, "a fresh lease, not the old one"
    assert kept[0].fence > max(lease.fence for lease in held)
    state = await book.state(KEY)
    assert state.in_use == 2 and {i.lease_id for i in state.leases} == {held[1].lease_id, kept[0].lease_id}


async def test_handover_keeps_fifo_between_processes(book_factory):
    a = await book_factory("gw-a", default_limit=1)
    b = await book_factory("gw-b", default_limit=1)
    held = await a.try_acquire(KEY)
    waiting = asyncio.create_task(b.acquire(KEY))
    await eventually(lambda: _waiting_is(a, 1))
    assert await a.handover(held) == [], "another process waits: the slot is its turn"
    got = await asyncio.wait_for(waiting, 5)
    assert len(got) == 1 and (await a.state(KEY)).in_use == 1
