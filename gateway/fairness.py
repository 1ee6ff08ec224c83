"""Fair shares of a key's slots between its flows (tenants × priority classes): deficit round
robin, decided without I/O.

Each time a gateway can start `slots` tasks under one key (worker credits, or leases it holds),
`FairShare.allocate` says how many to read from each flow that has work:

- every flow with work earns its weight per round (`class weight × tenant weight`), spends
  whole tasks out of what it earned, and what it could not spend carries over (the deficit), so
  over time each flow gets its weight's share of the key, however small `slots` is each time;
- the round starts where the last one stopped, so with one slot at a time flows take turns;
- a flow that runs empty forgets its deficit (no credit is hoarded while idle).

So a tenant with one task waits at most one round behind another tenant's backlog, and
interactive work (priority > 0) gets `INTERACTIVE_WEIGHT` times the share of batch work on the
same key, while batch work still moves (no starvation). State is per gateway, in memory: each
gateway is fair over what it reads; together they are fair over the key.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from .queues import BATCH, INTERACTIVE, QueueName

INTERACTIVE_WEIGHT = 4.0
BATCH_WEIGHT = 1.0


@dataclass(frozen=True)
class Flow:
    queue: QueueName
    lag: int           # entries waiting in it (not yet read by any gateway)
    weight: float = 1.0


def klass(priority: int) -> str:
    """The priority class of a batch: priority > 0 is interactive, the rest batch."""
    return INTERACTIVE if priority > 0 else BATCH


class FairShare:
    def __init__(self, tenant_weights: Mapping[str, float] | None = None) -> None:
        self.tenant_weights = dict(tenant_weights or {})
        self._deficit: dict[QueueName, float] = {}
        self._order: dict[tuple[str, str], deque[QueueName]] = {}
        # Flows at the head of their key's order whose quantum was added on this visit.
        self._visiting: set[QueueName] = set()

    def weight(self, q: QueueName) -> float:
        w = INTERACTIVE_WEIGHT if q.klass == INTERACTIVE else BATCH_WEIGHT
        return w * self.tenant_weights.get(q.tenant, 1.0)

    def flows(self, lags: Mapping[QueueName, int]) -> list[Flow]:
        return [Flow(q, n, self.weight(q)) for q, n in lags.items()]

    def allocate(self, flows: list[Flow], slots: int) -> dict[QueueName, int]:
        """How many entries to take from each flow (all flows of one pool and key), at most
        `slots` in all and at most each flow's lag."""
        active = [f for f in flows if f.lag > 0]
        for f in flows:
            if f.lag <= 0:
                self._deficit.pop(f.queue, None)
                self._visiting.discard(f.queue)
        if not active or slots <= 0:
            return {}
        key = (active[0].queue.pool, active[0].queue.key_id)
        order = self._order.setdefault(key, deque())
        live = {f.queue: f for f in active}
        for q in [q for q in order if q not in live]:
            order.remove(q)
            self._deficit.pop(q, None)
            self._visiting.discard(q)
        for f in active:
            if f.queue not in order:
                order.append(f.queue)
        smallest = min(f.weight for f in active)
        left = {q: live[q].lag for q in order}
        out: dict[QueueName, int] = {}
        while slots > 0 and any(left.values()):
            q = order[0]
            if left[q] > 0:
                if q not in self._visiting:  # the pointer arrives: the flow earns its quantum once
                    self._deficit[q] = self._deficit.get(q, 0.0) + live[q].weight / smallest
                    self._visiting.add(q)
                take = min(math.floor(self._deficit[q]), left[q], slots)
                if take:
                    out[q] = out.get(q, 0) + take
                self._deficit[q] -= take
                left[q] -= take
                slots -= take
                if slots == 0 and left[q] > 0 and self._deficit[q] >= 1:
                    break  # the next call goes on with this flow's visit (no new quantum)
            if left[q] == 0:
                self._deficit.pop(q, None)
            self._visiting.discard(q)
            order.rotate(-1)
        return out

    def forget(self, queues: list[QueueName]) -> None:
        """Flows that are gone (collected)."""
        for q in queues:
            self._deficit.pop(q, None)
            self._visiting.discard(q)
            order = self._order.get((q.pool, q.key_id))
            if order is not None and q in order:
                order.remove(q)
