"""Admission by cost: how much enhance work this worker holds at once.

Cost of an image = input megapixels × upscale² (about the output's size, which is what memory
and time grow with). A `CostBudget` admits work while the admitted cost stays within the
budget; the rest waits in FIFO order (a large image is never overtaken forever by small ones).
An image that costs more than the whole budget is admitted alone, when nothing else is held —
the input size limits, not the budget, decide what is refused.

`acquire` is cancellable: a cancelled waiter leaves the queue and wakes whoever could now fit.
`release` must be called exactly once per successful `acquire` (from the event loop thread).
"""

from __future__ import annotations

import asyncio
from collections import deque


def image_cost(width: int, height: int, upscale: int) -> float:
    return width * height / 1e6 * upscale * upscale


class CostBudget:
    def __init__(self, budget: float) -> None:
        if budget <= 0:
            raise ValueError("the cost budget must be positive")
        self.budget = budget
        self.in_use = 0.0
        self.holders = 0
        self._waiters: deque[tuple[asyncio.Future, float]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _fits(self, cost: float) -> bool:
        return self.holders == 0 or self.in_use + cost <= self.budget + 1e-9

    async def acquire(self, cost: float) -> None:
        if not self._waiters and self._fits(cost):
            self._take(cost)
            return
        fut = asyncio.get_running_loop().create_future()
        entry = (fut, cost)
        self._waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(cost)  # granted and cancelled in the same tick: give it back
            else:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                self._wake()
            raise

    def release(self, cost: float) -> None:
        self.in_use = max(0.0, self.in_use - cost)
        self.holders -= 1
        self._wake()

    def _take(self, cost: float) -> None:
        self.in_use += cost
        self.holders += 1

    def _wake(self) -> None:
        while self._waiters:
            fut, cost = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if not self._fits(cost):
                return
            self._waiters.popleft()
            self._take(cost)
            fut.set_result(None)
