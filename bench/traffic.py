"""Load through the public API: batches submitted with `imagemesh.client.Client`, each result's
arrival time recorded on the caller's side (the only clock that matters to a caller).

Times are `time.perf_counter()` seconds relative to a `t0` the scenario chooses (usually just
before the first submit). A failed task is counted, and its first error kept, never hidden: a
figure from a run where tasks failed is reported with the failures next to it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from imagemesh.client import Client, generate
from imagemesh.v1 import imagemesh_pb2 as pb


@dataclass
class BatchOutcome:
    batch_id: str = ""
    submitted: float = 0.0              # when the submit call started (relative to t0)
    accepted: float = 0.0               # when `accepted` arrived
    arrivals: list[float] = field(default_factory=list)   # each result, in arrival order
    states: Counter = field(default_factory=Counter)
    first_error: str = ""

    @property
    def results(self) -> int:
        return len(self.arrivals)

    @property
    def succeeded(self) -> int:
        return self.states.get("SUCCEEDED", 0)

    @property
    def last(self) -> float:
        return self.arrivals[-1] if self.arrivals else float("nan")

    @property
    def makespan(self) -> float:
        """From this batch's submit to its last result."""
        return self.last - self.submitted


def local_tasks(n: int, *, prefix: str = "t", **inputs) -> list[pb.Task]:
    """Trivial tasks for the offline `local` renderer: a 16×16 PNG each (unless inputs say)."""
    inputs = {"width": 16, "height": 16, **inputs}
    return [generate(f"{prefix}{i}", f"{prefix}{i}.png", providers=["local"], seed=i, **inputs)
            for i in range(n)]


def replicate_tasks(n: int, *, prefix: str = "r", latencies: list[float] | None = None) -> list[pb.Task]:
    """Tasks for the fake Replicate; `latencies` (seconds) sets each job's run time."""
    tasks = []
    for i in range(n):
        extra = {"_fake_latency": latencies[i]} if latencies else {}
        tasks.append(generate(f"{prefix}{i}", f"{prefix}{i}.png", model="bench/fake", providers=["replicate"],
                              **extra))
    return tasks


async def run_batch(client: Client, tasks: list[pb.Task], t0: float, *,
                    credentials: dict[str, str] | None = None,
                    started: asyncio.Event | None = None, out: BatchOutcome | None = None) -> BatchOutcome:
    """Submit one batch and follow it to its summary. `started` is set once `accepted` arrives;
    pass `out` to watch the outcome fill in while the batch runs (its batch_id, to cancel it)."""
    out = out if out is not None else BatchOutcome()
    out.submitted = time.perf_counter() - t0
    async for event in client.submit(tasks, credentials=credentials):
        now = time.perf_counter() - t0
        if event.HasField("accepted"):
            out.batch_id = event.batch_id
            out.accepted = now
            if started is not None:
                started.set()
        elif event.HasField("result"):
            r = event.result
            out.arrivals.append(now)
            out.states[pb.TaskState.Name(r.state)] += 1
            if r.state != pb.SUCCEEDED and not out.first_error:
                out.first_error = f"{r.error.code}: {r.error.message}"[:300]
    return out


async def run_batches(address: str, api_key: str, batches: list[list[pb.Task]], *,
                      credentials: dict[str, str] | None = None,
                      addresses: list[str] | None = None) -> tuple[list[BatchOutcome], float]:
    """Submit every batch at once (one channel per gateway address, batches spread round-robin);
    returns the outcomes and the wall time from the first submit to the last result."""
    targets = addresses or [address]
    clients = [Client(a, api_key) for a in targets]
    try:
        t0 = time.perf_counter()
        outcomes = await asyncio.gather(*(run_batch(clients[i % len(clients)], b, t0, credentials=credentials)
                                          for i, b in enumerate(batches)))
        wall = time.perf_counter() - t0
    finally:
        for c in clients:
            await c.aclose()
    return list(outcomes), wall


def tally(outcomes: list[BatchOutcome]) -> dict:
    states: Counter = Counter()
    for o in outcomes:
        states.update(o.states)
    errors = [o.first_error for o in outcomes if o.first_error]
    return {"results": sum(o.results for o in outcomes), "states": dict(states),
            "first_error": errors[0] if errors else ""}
