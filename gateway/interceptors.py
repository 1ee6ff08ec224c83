"""Authentication before the body is read: a server interceptor checks the `authorization`
metadata and the role the method needs, from the call's headers alone.

An unauthenticated or unauthorised call is answered by a handler that reads *streaming* (even
for a unary method), so gRPC never reads or parses its request message: a 15 MB SubmitBatch
without a valid key costs a hash of the header, not 15 MB of buffers and a protobuf parse. The
client sees UNAUTHENTICATED or PERMISSION_DENIED.

An accepted call's `Caller` is put in a context variable: grpc.aio runs the interceptor and the
handler in one `contextvars.Context` per call (documented on `grpc.aio.ServerInterceptor`), so
servicers read it with `current_caller()`.

Roles per method: `ImageMesh` needs `client`, `MeshAdmin` needs `admin`, `WorkerLink` needs
`worker`; an admin key may call everything. Health and reflection are open (probes, grpcurl):
they reveal nothing beyond the public protos. A method not listed here is answered by gRPC
itself (UNIMPLEMENTED) only for a caller with a valid key.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable

import grpc

from imagemesh.auth import ApiKeys, Caller

# Service (full name) -> roles that may call its methods (admin may call all).
ROLES: dict[str, tuple[str, ...]] = {
    "imagemesh.v1.ImageMesh": ("client",),
    "imagemesh.v1.MeshAdmin": ("admin",),
    "imagemesh.v1.WorkerLink": ("worker",),
    "imagemesh.v1.WorkerObjects": ("worker",),
}
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")

_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("imagemesh_caller")

UNAUTHENTICATED_MESSAGE = "missing or unknown API key: send metadata 'authorization: Bearer <key>'"


def current_caller() -> Caller:
    """The caller the interceptor authenticated for this call. LookupError outside a call that
    went through `Authenticator` (a servicer registered on a server without it)."""
    return _caller.get()


def _refusal(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def refuse(_request_iterator, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    # Streaming request side: the request is never read (see the module docstring).
    return grpc.stream_stream_rpc_method_handler(refuse)


class Authenticator(grpc.aio.ServerInterceptor):
    def __init__(self, keys: ApiKeys) -> None:
        self.keys = keys

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        service = details.method.lstrip("/").rpartition("/")[0]
        if service in OPEN_SERVICES:
            return await continuation(details)
        authorization = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        caller = self.keys.identify(authorization if isinstance(authorization, str) else None)
        if caller is None:
            return _refusal(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        roles = ROLES.get(service, ())
        if roles and caller.role not in roles and not caller.is_admin:
            return _refusal(grpc.StatusCode.PERMISSION_DENIED,
                            f"this call needs the role {' or '.join(roles)}; the key has role {caller.role}")
        _caller.set(caller)
        return await continuation(details)
