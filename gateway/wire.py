"""Registering servicers so that undecodable requests get INVALID_ARGUMENT, not INTERNAL.

grpcio answers a request its deserializer can't parse (bad wire bytes, invalid UTF-8 in a string
field) with INTERNAL "Exception deserializing request", which tells a caller nothing and looks
like our bug. Here each method's deserializer returns a `Malformed` marker instead, and a thin
wrapper aborts such calls with INVALID_ARGUMENT naming the message type.

Streaming responses may also be yielded already serialized (`bytes`): the batch events a
gateway relays are built from the stored bytes (`gateway.follower`), never parsed to be
serialised again. Their serializer passes bytes through and serialises messages. Everything
else is the generated registration, unchanged.
"""

from __future__ import annotations

import functools
import inspect

import grpc
from google.protobuf.message import DecodeError


class Malformed:
    __slots__ = ("type_name", "reason")

    def __init__(self, type_name: str, reason: str) -> None:
        self.type_name = type_name
        self.reason = reason

    def message(self) -> str:
        return f"malformed {self.type_name}: {self.reason}"


def _tolerant(message_cls):
    def parse(data: bytes):
        try:
            return message_cls.FromString(data)
        except (DecodeError, ValueError, UnicodeDecodeError) as exc:
            return Malformed(message_cls.DESCRIPTOR.full_name, str(exc)[:200] or type(exc).__name__)
    return parse


def _passing_bytes(serialize):
    def serializer(response) -> bytes:
        return response if type(response) is bytes else serialize(response)
    return serializer


async def _checked(requests, context):
    async for request in requests:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message())
        yield request


def _wrap(behavior, request_streaming: bool, response_streaming: bool):
    if response_streaming:
        @functools.wraps(behavior)
        async def streaming(request, context):
            if request_streaming:
                request = _checked(request, context)
            elif isinstance(request, Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message())
            responses = behavior(request, context)
            request = None  # the servicer holds it as long as it needs it, not this frame
            try:
                async for response in responses:
                    yield response
            finally:
                # Run the servicer's own cleanup now (a cancelled call), not at garbage collection.
                await responses.aclose()
        return streaming

    @functools.wraps(behavior)
    async def unary(request, context):
        if request_streaming:
            request = _checked(request, context)
        elif isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message())
        return await behavior(request, context)
    return unary


def add_servicer(server: grpc.aio.Server, servicer, service_descriptor, messages_module) -> None:
    """Register `servicer` for `service_descriptor` with tolerant deserializers."""
    handlers = {}
    for method in service_descriptor.methods:
        request_cls = getattr(messages_module, method.input_type.name)
        response_cls = getattr(messages_module, method.output_type.name)
        behavior = getattr(servicer, method.name)
        rs, ss = method.client_streaming, method.server_streaming
        if ss and not inspect.isasyncgenfunction(behavior):
            raise TypeError(f"{method.name} must be an async generator")
        wrapped = _wrap(behavior, rs, ss)
        factory = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(rs, ss)]
        serialize = response_cls.SerializeToString
        handlers[method.name] = factory(wrapped, request_deserializer=_tolerant(request_cls),
                                        response_serializer=_passing_bytes(serialize) if ss else serialize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_descriptor.full_name, handlers),))
