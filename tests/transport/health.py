"""Asking a process's gRPC health service, as kubelet's native gRPC probes do."""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = "SERVING"


def status(port: int, service: str = "", tls_credentials: grpc.ChannelCredentials | None = None) -> str:
    """SERVING, NOT_SERVING, or the gRPC error's code name (UNAVAILABLE: nothing answers)."""
    target = f"127.0.0.1:{port}"
    channel = (grpc.secure_channel(target, tls_credentials) if tls_credentials is not None
               else grpc.insecure_channel(target))
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_for(port: int, wanted: str, *, service: str = "", timeout: float = 20.0, **kwargs) -> float:
    """Seconds until the status is `wanted`; AssertionError with the last status on timeout."""
    start = time.monotonic()
    last = None
    while time.monotonic() - start < timeout:
        last = status(port, service, **kwargs)
        if last == wanted:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"health {service or '(overall)'} on :{port} stayed {last}, wanted {wanted}")
