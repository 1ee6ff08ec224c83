"""Workers connected to this gateway, grouped in pools, and the credits they granted.

A worker grants one credit per task it can start; the gateway never sends more assignments
than credits (so a worker's own queue is bounded by its capacity). What the gateway has to send
a worker is gathered in its `Outbox` and leaves as one frame: batching frames is what keeps the
per-message cost of gRPC off the hot path.
"""

from __future__ import annotations

import asyncio
import time
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
    in_flight: set[str] = field(default_factory=set)
    connected_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.monotonic)
    outbox: Outbox = field(default_factory=Outbox)


class Pool:
    """The workers of one pool on this gateway; hands out their credits."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.workers: dict[str, Worker] = {}
        self._credit = asyncio.Event()

    @property
    def credits(self) -> int:
        return sum(w.credits for w in self.workers.values() if not w.draining)

    @property
    def capacity(self) -> int:
        return sum(w.capacity for w in self.workers.values())

    @property
    def in_flight(self) -> int:
        return sum(len(w.in_flight) for w in self.workers.values())

    def add(self, w: Worker) -> None:
        self.workers[w.worker_id] = w
        self._signal()

    def remove(self, w: Worker) -> None:
        if self.workers.get(w.worker_id) is w:
            del self.workers[w.worker_id]
        self._signal()

    def grant(self, w: Worker, credits: int) -> None:
        w.credits += credits
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
