"""Which workers the whole mesh has: each gateway publishes its own connected workers to Redis
every second, so `ListWorkers` on any replica shows every worker of every replica.

    im:gateways            zset   gateway id -> last publication (unix s)
    im:gw:{<id>}:workers   hash   worker id -> WorkerInfo (serialized), expires after 5 s

A gateway that dies stops publishing; its entry ages out of the listing within seconds.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from imagemesh.v1 import imagemesh_pb2 as pb

from .pools import Pool

STALE_AFTER = 5.0


class WorkerRegistry:
    def __init__(self, redis: aioredis.Redis, *, gateway_id: str, prefix: str = "im") -> None:
        self.r = redis
        self.gateway_id = gateway_id
        self.index = f"{prefix}:gateways"
        self.prefix = prefix

    def _key(self, gateway_id: str) -> str:
        return f"{self.prefix}:gw:{{{gateway_id}}}:workers"

    def local(self, pools: list[Pool]) -> list[pb.WorkerInfo]:
        return [pb.WorkerInfo(worker_id=w.worker_id, pool=w.pool, capacity=w.capacity,
                              in_flight=pool.worker_in_flight(w), gateway=self.gateway_id, device=w.device,
                              connected_ms=int(w.connected_at * 1000), draining=w.draining)
                for pool in pools for w in pool.workers.values()]

    async def publish(self, pools: list[Pool]) -> None:
        now = time.time()
        key = self._key(self.gateway_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.delete(key)
        infos = self.local(pools)
        if infos:
            pipe.hset(key, mapping={i.worker_id: i.SerializeToString() for i in infos})
            pipe.expire(key, int(STALE_AFTER))
        pipe.zadd(self.index, {self.gateway_id: now})
        pipe.zremrangebyscore(self.index, 0, now - 60)
        await pipe.execute()

    async def all(self) -> list[pb.WorkerInfo]:
        gateways = await self.r.zrangebyscore(self.index, time.time() - STALE_AFTER, "+inf")
        pipe = self.r.pipeline(transaction=False)
        for g in gateways:
            pipe.hvals(self._key(g.decode()))
        return [pb.WorkerInfo.FromString(v) for values in await pipe.execute() for v in values]
