"""A lease holder process for the fault tests (run as `python -m tests.leases.holder ...`).

`--workers` coroutines each loop: acquire a lease → call the fake provider → release. All held
leases are renewed every ttl/3 in one round trip; a watchdog cancels a call whose lease's local
deadline passed, and a lease lost that way is NOT released (its job may still run at the
provider: it stays counted until its hard end). Prints `ready` once subscribed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from imagemesh.leases import LeaseBook


async def main(a: argparse.Namespace) -> None:
    r = aioredis.Redis.from_url(a.redis, socket_timeout=2.0, socket_connect_timeout=1.0)
    book = LeaseBook(r, holder=a.holder, ttl=a.ttl, margin=a.margin, max_job_runtime=a.mjr,
                     default_limit=a.limit)
    await book.start()
    held: dict[str, list] = {}  # lease id -> [lease, provider call task]
    lo, hi = (int(x) for x in a.job_ms.split("-"))

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                lease = (await book.acquire(a.key, 1))[0]
            except RedisError:
                await asyncio.sleep(0.05)
                continue
            call = asyncio.create_task(session.post(
                f"{a.provider}/run", params={"ms": random.randint(lo, hi)},
                headers={"Authorization": f"Bearer {a.token}"}))
            held[lease.lease_id] = [lease, call]
            try:
                (await call).release()
                finished = True
            except asyncio.CancelledError:
                if not call.cancelled():
                    raise
                finished = False  # lease lost: the job may still run, leave it counted
            except aiohttp.ClientError:
                finished = True   # the provider answered nothing useful, but the call is over
            current = held.pop(lease.lease_id)[0]
            if finished:
                try:
                    await book.release([current])
                except RedisError:
                    pass

    async def renewer() -> None:
        while True:
            await asyncio.sleep(a.ttl / 3)
            items = list(held.values())
            if not items:
                continue
            try:
                renewed, lost = await book.renew([lease for lease, _ in items])
            except RedisError:
                continue
            for lease in renewed:
                if lease.lease_id in held:
                    held[lease.lease_id][0] = lease
            for lease in lost:
                if lease.lease_id in held:
                    held[lease.lease_id][1].cancel()

    async def watchdog() -> None:
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            for lease, call in list(held.values()):
                if lease.deadline <= now:
                    call.cancel()

    print("ready", flush=True)
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(renewer(), watchdog(), *(worker(session) for _ in range(a.workers)))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    for name, typ, default in [("redis", str, None), ("provider", str, None), ("key", str, None),
                               ("token", str, None), ("holder", str, None), ("workers", int, 4),
                               ("ttl", float, 1.0), ("margin", float, 0.3), ("mjr", float, 3.0),
                               ("limit", int, 8), ("job-ms", str, "100-400")]:
        p.add_argument(f"--{name}", type=typ, default=default, required=default is None)
    asyncio.run(main(p.parse_args()))
