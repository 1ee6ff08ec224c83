"""Lua scripts by name, called with EVALSHA in pipelines of our own.

redis-py's `Script` objects check `SCRIPT EXISTS` before every pipeline that holds one: a round
trip per pipeline on the hot path. Here a pipeline sends EVALSHA straight away; a call that
Redis answers NOSCRIPT (it restarted, or `SCRIPT FLUSH`) gets the scripts loaded again and is
sent once more, alone: calls that succeeded are never repeated.

What can go wrong: any other Redis error is raised (the first one in call order), after the
whole pipeline ran; callers treat their calls as idempotent or fenced, as every script here is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

Call = tuple[str, Sequence[str], Sequence[object]]  # (script name, keys, args)


class Scripts:
    def __init__(self, redis: aioredis.Redis, texts: Mapping[str, str]) -> None:
        self.r = redis
        self.texts = dict(texts)
        self.sha = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in self.texts.items()}

    async def load(self) -> None:
        pipe = self.r.pipeline(transaction=False)
        for text in self.texts.values():
            pipe.script_load(text)
        await pipe.execute()

    async def run(self, calls: Sequence[Call]) -> list:
        """Every call in one round trip; their replies in order. Raises RedisError."""
        if not calls:
            return []
        replies = await self._send(calls)
        missing = [k for k, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            await self.load()
            again = await self._send([calls[k] for k in missing])
            for k, reply in zip(missing, again):
                replies[k] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def one(self, name: str, keys: Sequence[str], args: Sequence[object]):
        return (await self.run([(name, keys, args)]))[0]

    async def _send(self, calls: Sequence[Call]) -> list:
        pipe = self.r.pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.evalsha(self.sha[name], len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)
