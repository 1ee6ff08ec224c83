"""Workers connected to this gateway, grouped in pools, and the credits they granted.

A worker grants one credit per task it can start; the gateway never sends more assignments
than credits (so a worker's own queue is bounded by its capacity). Credits are checked: a grant
below zero, or one that would let credits plus attempts in flight exceed the worker's declared
capacity, is refused (`BadCredits`), so no worker can stall or flood a pool. What the gateway
has to send a worker is gathered in its `Outbox` and leaves as one frame: batching frames is
what keeps the per-message cost of gRPC off the hot path.

Which attempts run on which worker is not kept here: gateway.inflight owns that (`in_flight`
is a function counting a worker's attempts there).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from imagemesh import metrics
from imagemesh.v1 import worker_pb2 as wpb


class Outbox:
    """Assignments and cancels waiting to be written to one worker stream."""

    def __init__(self) -> None:
        self.assignments: list[wpb.Assignment] = []
        self.cancels: list[str] = []
        self.goaway = False
        self._ready = asyncio.Event()

    def put_assignment(self, a: wpb.Assignment) -> None:
        self.assignments.append(a)
        self._ready.set()

    def put_cancel(self, attempt_id: str) -> None:
        self.cancels.append(attempt_id)
        self._ready.set()

    def put_goaway(self) -> None:
        self.goaway = True
        self._ready.set()

    async def take(self, timeout: float) -> wpb.GatewayMessage | None:
        """The next frame, or None when nothing came within `timeout` seconds."""
        if not (self.assignments or self.cancels or self.goaway):
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except asyncio.TimeoutError:
                return None
        msg = wpb.GatewayMessage(assignments=self.assignments, cancels=self.cancels, goaway=self.goaway)
        self.assignments, self.cancels, self.goaway = [], [], False
        return msg


@dataclass(eq=False)
class Worker:
    worker_id: str
    pool: str
    capacity: int
    device: str
    credits: int = 0
    draining: bool = False
    connected_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.monotonic)
    outbox: Outbox = field(default_factory=Outbox)


class BadCredits(ValueError):
    """A worker granted credits it cannot have (negative, or more than its capacity)."""


class Pool:
    """The workers of one pool on this gateway; hands out their credits."""

    def __init__(self, name: str, in_flight: Callable[[str], int] = lambda worker_id: 0) -> None:
        self.name = name
        self.workers: dict[str, Worker] = {}
        self._credit = asyncio.Event()
        self._in_flight = in_flight

    @property
    def credits(self) -> int:
        return sum(w.credits for w in self.workers.values() if not w.draining)

    @property
    def capacity(self) -> int:
        return sum(w.capacity for w in self.workers.values())

    @property
    def in_flight(self) -> int:
        return sum(self._in_flight(w.worker_id) for w in self.workers.values())

    def worker_in_flight(self, w: Worker) -> int:
        return self._in_flight(w.worker_id)

    def add(self, w: Worker) -> None:
        self.workers[w.worker_id] = w
        self._signal()

    def remove(self, w: Worker) -> None:
        if self.workers.get(w.worker_id) is w:
            del self.workers[w.worker_id]
        self._signal()

    def grant(self, w: Worker, credits: int) -> None:
        """Add credits the worker granted. Raises BadCredits for a grant outside 0..capacity (a
        broken or hostile worker: its stream is ended). Within that, credits plus attempts in
        flight are capped at the capacity, so a grant that crossed an assignment in flight can't
        overfill the worker either."""
        if not 0 <= credits <= w.capacity:
            raise BadCredits(f"credits: {credits}, must be 0..{w.capacity} (the worker's capacity)")
        w.credits = min(w.credits + credits, max(0, w.capacity - self._in_flight(w.worker_id)))
        self._signal()

    def give_back(self, w: Worker) -> None:
        """An assignment taken for `w` was not sent after all: its credit returns."""
        if self.workers.get(w.worker_id) is w:
            w.credits += 1
            self._signal()

    def _signal(self) -> None:
        if self.credits > 0:
            self._credit.set()
        else:
            self._credit.clear()
        self.export()

    async def wait_for_credit(self, timeout: float | None = None) -> bool:
        if self.credits > 0:
            return True
        try:
            await asyncio.wait_for(self._credit.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return self.credits > 0

    def take(self) -> Worker | None:
        """Spend one credit of the worker with the most (spreads load); None when none left."""
        best = None
        for w in self.workers.values():
            if w.credits > 0 and not w.draining and (best is None or w.credits > best.credits):
                best = w
        if best is not None:
            best.credits -= 1
            if best.credits == 0:
                self._signal()
        return best

    def export(self) -> None:
        metrics.POOL_WORKERS.labels(self.name).set(len(self.workers))
        metrics.POOL_CAPACITY.labels(self.name).set(self.capacity)
        metrics.POOL_IN_FLIGHT.labels(self.name).set(self.in_flight)
        metrics.POOL_UTILIZATION.labels(self.name).set(self.in_flight / self.capacity if self.capacity else 0)
