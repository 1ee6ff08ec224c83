"""The standard gRPC health service on a plaintext port of its own, for Kubernetes' native
gRPC probes (which speak neither TLS nor our API keys).

Two services, the same in every process:
- `""` (the overall status): readiness. SERVING only while the process can do its work (a
  worker connected to a gateway; a gateway whose Redis answers); NOT_SERVING while draining.
- `liveness`: SERVING while the process runs (an enhance worker: once its models are loaded).
  Liveness probes ask for it, so a lost gateway or Redis never gets a pod restarted for nothing.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from imagemesh.config import SettingError
from imagemesh.process import announce, check_bindable, host_port

LIVENESS = "liveness"


def status(serving: bool) -> int:
    return health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING


class HealthServer:
    """A gRPC server holding only the health service, on host:port. Port -1: no server (calls
    only change the servicer). `servicer`: share one with another server (the gateway serves the
    same statuses on its API port). SettingError when the port can't be bound: port reuse is
    off, so a busy port fails instead of being shared."""

    def __init__(self, port: int, host: str = "127.0.0.1", servicer: health_aio.HealthServicer | None = None) -> None:
        self.servicer = servicer or health_aio.HealthServicer()
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)]) if port >= 0 else None
        self.port = -1
        if self.server is not None:
            health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self.server)
            check_bindable("health_port", host, port)
            try:
                self.port = self.server.add_insecure_port(host_port(host, port))
            except RuntimeError:
                raise SettingError("health_port", f"cannot listen on {host_port(host, port)}") from None

    async def start(self) -> None:
        """Start with both services NOT_SERVING, and say the port on stdout (`HEALTH_PORT=`)."""
        await self.set(False)
        await self.set_live(False)
        if self.server is None:
            return
        await self.server.start()
        announce("HEALTH_PORT", self.port)

    async def set(self, serving: bool) -> None:
        """Readiness: able to do this process's work."""
        await self.servicer.set("", status(serving))

    async def set_live(self, serving: bool) -> None:
        await self.servicer.set(LIVENESS, status(serving))

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
