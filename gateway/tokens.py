"""The provider token an attempt runs with: the caller's own (sealed in the batch's record,
opened here) or the server's.

Sealed tokens are read once per batch and kept in a small LRU (they never change while the
batch lives); opened tokens are never kept.

What can go wrong: a Redis error reading the sealed tokens propagates (the caller retries);
a sealed token this gateway cannot open (another `IMAGEMESH_SECRET_KEY`) raises TaskFailure,
which fails that task alone.
"""

from __future__ import annotations

from collections import OrderedDict

from imagemesh.credentials import Sealer
from imagemesh.errors import TaskFailure

from .batches import BatchStore
from .routing import Routing


class BatchTokens:
    def __init__(self, batches: BatchStore, sealer: Sealer, routing: Routing, *, size: int = 1024) -> None:
        self.batches = batches
        self.sealer = sealer
        self.routing = routing
        self.size = size
        self._sealed: OrderedDict[str, dict[str, bytes]] = OrderedDict()

    async def token(self, batch_id: str, provider: str) -> str | None:
        """The token for `provider` in `batch_id`, or None if neither the caller nor the server
        has one. Raises RedisError, TaskFailure."""
        sealed = self._sealed.get(batch_id)
        if sealed is None:
            sealed = await self.batches.sealed_tokens(batch_id)
            self._sealed[batch_id] = sealed
            while len(self._sealed) > self.size:
                self._sealed.popitem(last=False)
        else:
            self._sealed.move_to_end(batch_id)
        if provider in sealed:
            try:
                return self.sealer.unseal(sealed[provider])
            except ValueError as exc:
                raise TaskFailure(str(exc)) from None
        return self.routing.server_token(provider)
