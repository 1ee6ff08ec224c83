"""gRPC servicer of MeshAdmin (admin keys only): keys and their leases, workers, providers."""

from __future__ import annotations

import grpc

from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import imagemesh_pb2_grpc as pb_grpc

from .api import translated
from .dispatch import Dispatcher
from .registry import WorkerRegistry
from .routing import Routing

MAX_LIMIT = 10_000


class MeshAdminServicer(pb_grpc.MeshAdminServicer):
    """Admin keys only: `interceptors.Authenticator` refuses other callers before a method runs."""

    def __init__(self, dispatcher: Dispatcher, routing: Routing, leases, registry: WorkerRegistry) -> None:
        self.dispatcher = dispatcher
        self.registry = registry
        self.routing = routing
        self.leases = leases

    async def _key_info(self, key_id: str) -> pb.KeyInfo:
        provider = key_id.split(":", 1)[0]
        info = pb.KeyInfo(id=key_id, provider=provider, alias=self.routing.alias(key_id))
        if not self.routing.is_leased(provider):
            info.limit = 0  # not limited: the provider's configured limit is 0
            return info
        state = await self.leases.state(key_id)
        info.limit, info.in_use, info.waiting = state.limit, state.in_use, state.waiting
        info.quarantined = state.quarantined
        for lease in state.leases:
            info.leases.add(lease_id=lease.lease_id, holder=lease.holder, ttl_ms=lease.ttl_ms,
                            fence=lease.fence, zombie=lease.zombie)
        return info

    async def _is_known(self, key_id: str) -> bool:
        """An aliased key (server tokens, IMAGEMESH_KEY_ALIASES), or one the mesh has seen: it
        has lease state in Redis or a generate queue. Raises RedisError."""
        if self.routing.alias(key_id) != key_id or key_id in await self.leases.known_keys():
            return True
        return any(q.key_id == key_id for q in await self.dispatcher.queues.names() if q.pool == "generate")

    async def ListKeys(self, request, context):
        async with translated(context):
            key_ids = set(await self.leases.known_keys())
            key_ids |= {q.key_id for q in await self.dispatcher.queues.names() if q.pool == "generate"}
            return pb.ListKeysResponse(keys=[await self._key_info(k) for k in sorted(key_ids)])

    async def SetKeyLimit(self, request, context):
        key_id = self.routing.resolve_alias(request.key)
        provider = key_id.split(":", 1)[0]
        if ":" not in key_id or provider not in self.routing.s.providers:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "key: give a key id (provider:fingerprint, see ListKeys) or an alias")
        if not 1 <= request.limit <= MAX_LIMIT:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"limit: {request.limit}, must be 1..{MAX_LIMIT}")
        async with translated(context):
            known = await self._is_known(key_id)
        if not known:
            # A limit for a key nobody uses would create it (a phantom key in ListKeys): most
            # likely a typo or an id cut short by a narrow table, so say so instead.
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"key: {request.key[:100]!r} is neither an alias nor a key this mesh knows "
                                "(give a full key id from ListKeys / `imagemesh keys`, or an alias)")
        if not self.routing.is_leased(provider):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"key: provider {provider!r} is configured without a limit (IMAGEMESH_KEY_LIMITS)")
        async with translated(context):
            await self.leases.set_limit(key_id, request.limit)
            return await self._key_info(key_id)

    async def ListWorkers(self, request, context):
        async with translated(context):
            workers = await self.registry.all()
        mine = {w.worker_id for w in workers}
        # This gateway's own workers even if its last publication is not in Redis yet.
        workers += [w for w in self.registry.local(list(self.dispatcher.pools.values())) if w.worker_id not in mine]
        return pb.ListWorkersResponse(workers=sorted(workers, key=lambda w: (w.pool, w.worker_id)))

    async def ListProviders(self, request, context):
        out = pb.ListProvidersResponse()
        for name, breaker in sorted(self.routing.circuits.items()):
            ok, failed = breaker.recent_counts()
            out.providers.add(name=name, circuit=breaker.state, recent_successes=ok, recent_failures=failed)
        return out
