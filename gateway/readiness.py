"""The gateway's readiness follows Redis: a gateway without its task store can accept nothing,
dispatch nothing and stream no event, so it should leave the Service's endpoints (and the
workers' DNS answer) until Redis is back, rather than answer UNAVAILABLE to every call.

`RedisReadiness` pings Redis every `interval` seconds (each ping bounded by `timeout`) and sets
the given health services SERVING or NOT_SERVING on a change, logging each change once. The
`liveness` service is not among them: it stays SERVING (probes that restart a gateway can't
bring Redis back). After `health.enter_graceful_shutdown()` (drain), the servicer ignores
every further change, so a drained gateway never turns SERVING again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio
from redis.exceptions import RedisError

log = logging.getLogger("imagemesh.gateway.readiness")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class RedisReadiness:
    def __init__(self, redis: aioredis.Redis, health: health_aio.HealthServicer, services: tuple[str, ...],
                 *, interval: float = 1.0, timeout: float = 2.0) -> None:
        self.redis = redis
        self.health = health
        self.services = services
        self.interval = interval
        self.timeout = timeout
        self.ready: bool | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Set the services from a first ping, then keep them current in the background."""
        await self.check()
        self._task = asyncio.create_task(self._run())

    async def check(self) -> bool:
        problem = ""
        try:
            await asyncio.wait_for(self.redis.ping(), self.timeout)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            problem = type(exc).__name__
        ready = not problem
        if ready != self.ready:
            if ready:
                log.info("Redis answers: SERVING")
            else:
                log.warning("Redis is unreachable (%s): NOT_SERVING until it answers again", problem)
            self.ready = ready
            for name in self.services:
                await self.health.set(name, SERVING if ready else NOT_SERVING)
        return ready

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("readiness check failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
