"""The gateway's Redis clients, made one way.

RESP2, explicitly. redis-py 8 speaks RESP3 unless told otherwise (5.x-7.x spoke RESP2, and we
accept redis>=5.2); the gateway's Lua scripts, its XREAD replies and the event follower's
blocking reads were written and are tested for RESP2 replies. Naming the protocol keeps the
gateway's behaviour the same on every redis-py it may be installed with, and keeps RESP3 push
messages (maintenance notifications) off connections that sit in a blocking read.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

PROTOCOL = 2


def client(url: str, **options: Any) -> aioredis.Redis:
    """A client of its own pool (redis-py's from_url options: timeouts, client_name, ...)."""
    return aioredis.Redis.from_url(url, protocol=PROTOCOL, **options)


def blocking_pool(url: str, **options: Any) -> aioredis.BlockingConnectionPool:
    """A pool whose callers wait for a free connection (max_connections, timeout, ...)."""
    return aioredis.BlockingConnectionPool.from_url(url, protocol=PROTOCOL, **options)
