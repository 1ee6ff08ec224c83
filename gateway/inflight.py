"""The attempts this gateway is working on: the one owner of attempt state.

Every change of an attempt's phase goes through `InFlight.handle(attempt, event)`, which asks
`gateway.attempts.decide` and applies the decision here; nothing else assigns `phase`,
`worker_id`, `cancel_reason` or `outcome`. The indexes (by id, by worker, the HELD line of each
pool) are kept in step by this class alone.

Everything here is also pending in Redis (each attempt's queue entry stays in this gateway's
consumer group until its outcome is written), so another gateway claims it if this one dies.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterator

from .attempts import Assigned, Attempt, Decision, Event, LeaseFate, Phase, Policy, Pool, decide


class InFlight:
    def __init__(self) -> None:
        self._by_id: dict[str, Attempt] = {}
        self._by_worker: dict[str, set[str]] = defaultdict(set)
        self._held: dict[Pool, deque[Attempt]] = {p: deque() for p in Pool}
        # Leases of settled attempts whose release is still to be written (retried).
        self.releases_due: list = []

    # -- reading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, attempt_id: str) -> bool:
        return attempt_id in self._by_id

    def __iter__(self) -> Iterator[Attempt]:
        return iter(list(self._by_id.values()))

    def get(self, attempt_id: str) -> Attempt | None:
        return self._by_id.get(attempt_id)

    def of_worker(self, worker_id: str) -> list[Attempt]:
        return [self._by_id[aid] for aid in self._by_worker.get(worker_id, ()) if aid in self._by_id]

    def count(self, worker_id: str) -> int:
        return len(self._by_worker.get(worker_id, ()))

    def held(self, pool: Pool) -> int:
        return sum(1 for a in self._held[pool] if a.phase is Phase.HELD)

    def settling(self) -> list[Attempt]:
        return [a for a in self._by_id.values() if a.phase is Phase.SETTLING]

    # -- changing ----------------------------------------------------------------------------
    def hold(self, a: Attempt) -> None:
        """A started attempt that waits for a worker credit (the end of its pool's line)."""
        if a.attempt_id in self._by_id:
            raise ValueError(f"attempt {a.attempt_id} is already in flight")
        a.phase = Phase.HELD
        self._by_id[a.attempt_id] = a
        self._held[a.pool].append(a)

    def adopt(self, a: Attempt, decision: Decision) -> None:
        """An attempt that arrives already decided (claimed from a dead gateway, or dropped at
        START): straight to SETTLING."""
        if a.attempt_id in self._by_id:
            raise ValueError(f"attempt {a.attempt_id} is already in flight")
        self._by_id[a.attempt_id] = a
        self._apply(a, decision)

    def next_held(self, pool: Pool) -> Attempt | None:
        """The oldest attempt of the pool still waiting for a credit."""
        line = self._held[pool]
        while line:
            a = line.popleft()
            if a.phase is Phase.HELD and a.attempt_id in self._by_id:
                return a
        return None

    def put_back(self, a: Attempt) -> None:
        """A held attempt that could not be sent after all goes back to the front of the line."""
        if a.phase is Phase.HELD:
            self._held[a.pool].appendleft(a)

    def handle(self, a: Attempt, event: Event, policy: Policy) -> Decision:
        """Decide and apply. The caller carries out what the decision says (cancel, outcome)."""
        d = decide(a, event, policy)
        if not d.ignored:
            if isinstance(event, Assigned):
                a.worker_id = event.worker_id
                self._by_worker[event.worker_id].add(a.attempt_id)
            self._apply(a, d)
        return d

    def _apply(self, a: Attempt, d: Decision) -> None:
        a.phase = d.phase
        if d.cancel_reason is not None:
            a.cancel_reason = d.cancel_reason
        if d.outcome is not None:
            a.outcome = d.outcome
        if d.lease is LeaseFate.ABANDON:
            a.lease = None  # counted until its hard end (see imagemesh.leases): nothing to write
        elif d.lease is LeaseFate.RELEASE and a.lease is not None:
            self.releases_due.append(a.lease)
            a.lease = None
        if d.phase is Phase.SETTLING:
            self._unlink_worker(a)

    def forget(self, a: Attempt) -> None:
        """The attempt's outcome is written: it leaves this gateway."""
        self._by_id.pop(a.attempt_id, None)
        self._unlink_worker(a)

    def _unlink_worker(self, a: Attempt) -> None:
        if a.worker_id is not None:
            ids = self._by_worker.get(a.worker_id)
            if ids is not None:
                ids.discard(a.attempt_id)
                if not ids:
                    del self._by_worker[a.worker_id]
