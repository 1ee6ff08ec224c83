"""Open client streams (SubmitBatch, Stream, WatchBatch), counted per tenant and per gateway and
capped (invariant 11): each holds a gRPC stream, a subscription to its batch's events
(`gateway.follower`) and their buffers, so one tenant can't take them all.

Past a cap a new stream is refused with Overloaded (RESOURCE_EXHAUSTED with `retry-after-ms`),
its message naming the limit; a stream already open is never cut. A SubmitBatch refused here
submits nothing. Counts are this process's: N replicas allow N times as many.
"""

from __future__ import annotations

from collections import Counter

from imagemesh import metrics

from .service import Overloaded

# Streams end when their batches do, which nothing here can predict: ask again soon.
RETRY_AFTER = 1.0


class OpenStreams:
    def __init__(self, *, per_tenant: int, total: int) -> None:
        self.per_tenant = per_tenant
        self.total = total
        self._open: Counter[str] = Counter()
        self._count = 0

    def claim(self, tenant: str) -> None:
        """Count a new stream of `tenant`; raises Overloaded past a cap (nothing is counted)."""
        if self._count >= self.total:
            raise Overloaded(f"this gateway has {self._count} client streams open, its limit is {self.total} "
                             "(IMAGEMESH_MAX_STREAMS); retry later or on another replica", retry_after=RETRY_AFTER)
        held = self._open[tenant]
        if held >= self.per_tenant:
            raise Overloaded(f"too many open streams for this caller: {held} on this gateway, the limit is "
                             f"{self.per_tenant} (IMAGEMESH_MAX_STREAMS_PER_TENANT); close one or retry later",
                             retry_after=RETRY_AFTER)
        self._open[tenant] = held + 1
        self._count += 1
        metrics.CLIENT_STREAMS.inc()

    def release(self, tenant: str) -> None:
        held = self._open[tenant] - 1
        if held > 0:
            self._open[tenant] = held
        else:
            del self._open[tenant]
        self._count -= 1
        metrics.CLIENT_STREAMS.dec()

    def open(self, tenant: str | None = None) -> int:
        """Streams open: the tenant's, or all."""
        return self._count if tenant is None else self._open.get(tenant, 0)
