"""The gateway process: one gRPC server (public API, admin, worker streams, health, reflection),
the dispatcher, and the Redis pub/sub that ties the replicas together.

Lifecycle: `start()` → SERVING; `drain()` (SIGTERM) → NOT_SERVING, stop taking work, let
in-flight attempts finish within the grace, re-queue the rest, stop the server.

Health, on the API port and on a plaintext health port of its own (`IMAGEMESH_HEALTH_PORT`:
kubelet's gRPC probes can't speak TLS): the overall status `""` and each service's are SERVING
only while Redis answers (`readiness.RedisReadiness`: readiness probes); `liveness` is SERVING
from start to drain, whatever Redis does (liveness probes: restarting a gateway can't bring Redis
back).

Transport: TLS or mutual TLS when configured (`imagemesh.tls`), plaintext otherwise, said in
the start log; every call is authenticated from its metadata before its request is read
(`interceptors.Authenticator`). Port reuse is off, so a second gateway on a busy port fails to
start instead of silently sharing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from imagemesh.auth import ApiKeys
from imagemesh.config import SettingError, parse_mapping
from imagemesh.credentials import Sealer
from imagemesh.health import LIVENESS, HealthServer
from imagemesh.leases import LeaseBook
from imagemesh.process import FatalError, check_bindable
from imagemesh.tls import ServerTls, TlsConfigError, describe_server
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import worker_pb2 as wpb

from . import redis_client, wire
from .admin import MeshAdminServicer
from .api import ImageMeshServicer
from .batches import BatchStore
from .budget import DailyBudget
from .dedup import Dedup
from .dispatch import Dispatcher, DispatchSettings
from .files_api import WorkerObjectsServicer
from .follower import EventFollower
from .interceptors import Authenticator
from .outputs import build_outputs
from .queues import TaskQueues
from .readiness import RedisReadiness
from .registry import WorkerRegistry
from .routing import Routing, RoutingSettings
from .service import BatchService
from .settings import GatewaySettings
from .streams import OpenStreams
from .tenants import TenantKeys
from .validation import Limits
from .worker_link import WorkerLinkServicer

log = logging.getLogger("imagemesh.gateway")

SERVICES = ("imagemesh.v1.ImageMesh", "imagemesh.v1.MeshAdmin", "imagemesh.v1.WorkerLink", "imagemesh.v1.WorkerObjects")


def load_keys(s: GatewaySettings) -> ApiKeys:
    text = s.api_keys
    if s.api_keys_file:
        text += "\n" + Path(s.api_keys_file).read_text()
    return ApiKeys.parse(text)


def routing_settings(s: GatewaySettings) -> RoutingSettings:
    tokens = {p: t for p, t in (("replicate", s.replicate_token), ("fal", s.fal_token),
                                ("openai", s.openai_token)) if t}
    providers = tuple(p.strip() for p in s.providers.split(",") if p.strip())
    defaults = tuple(p.strip() for p in s.default_providers.split(",") if p.strip())
    unknown = [p for p in defaults if p not in providers]
    if unknown:
        raise ValueError(f"IMAGEMESH_DEFAULT_PROVIDERS names {unknown}, not in IMAGEMESH_PROVIDERS")
    return RoutingSettings(providers=providers, default_providers=defaults,
                           limits=parse_mapping(s.key_limits, value_type=int), server_tokens=tokens,
                           allow_server_tokens=s.allow_server_tokens,
                           aliases=parse_mapping(s.key_aliases))


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.s = settings
        self.id = f"gw-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.keys = load_keys(settings)
        if not settings.secret_key and not settings.single_instance:
            # With a random key per replica, a batch accepted by one gateway can't be run by
            # another, and one token gets a key id per replica (doubling its mesh-wide limit).
            raise FatalError("IMAGEMESH_SECRET_KEY is not set: give every gateway the same Fernet key (make one "
                             "with `python -c 'from cryptography.fernet import Fernet; "
                             "print(Fernet.generate_key().decode())'`), or set IMAGEMESH_SINGLE_INSTANCE=true "
                             "to run one gateway with a random key")
        self.sealer = Sealer(settings.secret_key or None)
        if self.sealer.ephemeral:
            log.warning("IMAGEMESH_SINGLE_INSTANCE: callers' tokens are sealed with a random key; run this "
                        "gateway alone (another replica could not open its batches' tokens)")
        try:
            self.tls = ServerTls.from_settings(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        except TlsConfigError as exc:
            raise FatalError(str(exc)) from None
        self.redis = redis_client.client(settings.redis_url, socket_timeout=5.0,
                                         socket_connect_timeout=2.0, health_check_interval=10)
        # Pub/sub waits indefinitely for messages: a connection without the read timeout.
        self.pubsub_redis = redis_client.client(settings.redis_url, socket_connect_timeout=2.0)
        p = settings.redis_prefix
        self.routing = Routing(routing_settings(settings), self.sealer)
        self.leases = LeaseBook(self.redis, holder=self.id, prefix=p,
                                ttl=settings.lease_ttl, margin=min(2.0, settings.lease_ttl / 4),
                                max_job_runtime=settings.max_job_runtime,
                                default_limit=self.routing.default_limit)
        self.batches = BatchStore(self.redis, prefix=p, retention=settings.retention,
                                  writer_ttl=settings.accept_timeout)
        self.queues = TaskQueues(self.redis, consumer=self.id, prefix=p)
        self.cancel_channel = f"{p}:cancel"
        self.dedup = Dedup(self.redis, prefix=p, ttl=settings.retention)
        self.outputs = build_outputs(settings, self.redis, self.batches)
        self.dispatcher = Dispatcher(
            redis=self.redis, batches=self.batches, queues=self.queues, leases=self.leases,
            routing=self.routing, sealer=self.sealer,
            settings=DispatchSettings(lease_ttl=settings.lease_ttl, max_job_runtime=settings.max_job_runtime,
                                      max_attempts=settings.max_attempts,
                                      heartbeat_interval=settings.heartbeat_interval,
                                      hedge_delay=settings.hedge_delay,
                                      queue_idle=settings.queue_idle,
                                      tenant_weights=tuple(parse_mapping(settings.tenant_weights, value_type=float).items())),
            cancel_channel=self.cancel_channel, dedup=self.dedup,
            budget=DailyBudget(self.redis, parse_mapping(settings.key_daily_budgets, value_type=int), prefix=p),
            outputs=self.outputs)
        # One reader of every batch's event log that this gateway's clients follow.
        self.follower = EventFollower(settings.redis_url, self.batches)
        self.service = BatchService(
            redis=self.redis, batches=self.batches, queues=self.queues, routing=self.routing,
            sealer=self.sealer, dispatcher=self.dispatcher, dedup=self.dedup, outputs=self.outputs,
            follower=self.follower,
            writer_wait=settings.accept_timeout + 5.0,
            tenant_keys=TenantKeys(self.redis, cap=settings.max_keys_per_tenant, prefix=p),
            limits=Limits(max_batch_tasks=settings.max_batch_tasks,
                          max_queued_per_tenant=settings.max_queued_per_tenant,
                          max_queued_bytes_per_tenant=settings.max_queued_bytes_per_tenant))
        self.registry = WorkerRegistry(self.redis, gateway_id=self.id, prefix=p)
        self.health = health_aio.HealthServicer()
        self.readiness = RedisReadiness(self.redis, self.health, ("", *SERVICES))
        self.probes = HealthServer(settings.health_port, settings.health_host, servicer=self.health)
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._listener: asyncio.Task | None = None
        self._publisher: asyncio.Task | None = None

    async def start(self) -> int:
        mb = self.s.max_message_bytes
        self.server = grpc.aio.server(interceptors=[Authenticator(self.keys)], options=[
            # A second gateway on a busy port must fail, not share it (workers would then
            # reach either at random).
            ("grpc.so_reuseport", 0),
            # No bandwidth-delay probing: it grows a connection's flow-control window to tens
            # of MB, which the transport fills (and buffers) before the interceptor has even
            # refused an unauthenticated call (measured: peak RSS +20 MB for refused 15 MB
            # calls with it, +0.3 MB without). A handler that reads a message still gets a
            # window of the message's size, so accepted large messages are not slowed
            # (a 15 MB SubmitBatch on loopback: ~200 ms either way).
            ("grpc.http2.bdp_probe", 0),
            ("grpc.max_receive_message_length", mb),
            ("grpc.max_send_message_length", mb),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # Rebalance clients and workers across replicas now and then; the grace lets the
            # longest job on an old connection finish.
            ("grpc.max_connection_age_ms", 30 * 60 * 1000),
            ("grpc.max_connection_age_grace_ms", int(self.s.max_job_runtime * 1000) + 60_000),
        ])
        services = pb.DESCRIPTOR.services_by_name
        self.streams = OpenStreams(per_tenant=self.s.max_streams_per_tenant, total=self.s.max_streams)
        wire.add_servicer(self.server, ImageMeshServicer(self.service, self.streams), services["ImageMesh"], pb)
        wire.add_servicer(self.server, MeshAdminServicer(self.dispatcher, self.routing, self.leases,
                                                         self.registry), services["MeshAdmin"], pb)
        wire.add_servicer(self.server, WorkerLinkServicer(self.dispatcher, gateway_id=self.id,
                                                          heartbeat_interval=self.s.heartbeat_interval),
                          wpb.DESCRIPTOR.services_by_name["WorkerLink"], wpb)
        wire.add_servicer(self.server, WorkerObjectsServicer(self.outputs),
                          wpb.DESCRIPTOR.services_by_name["WorkerObjects"], wpb)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (pb.DESCRIPTOR.services_by_name["ImageMesh"].full_name,
             pb.DESCRIPTOR.services_by_name["MeshAdmin"].full_name,
             wpb.DESCRIPTOR.services_by_name["WorkerLink"].full_name,
             wpb.DESCRIPTOR.services_by_name["WorkerObjects"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self.server)
        self.port = self._bind()
        # Plaintext is allowed (the demo, a trusted network) but never silent.
        log.log(logging.INFO if self.tls else logging.WARNING, "gRPC transport: %s", describe_server(self.tls))
        await self.leases.start()
        await self.dispatcher.start()
        self.outputs.start()
        self.follower.start()
        self._listener = asyncio.create_task(self._listen())
        self._publisher = asyncio.create_task(self._publish_workers())
        await self.probes.start()  # NOT_SERVING until Redis has answered
        await self.server.start()
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.readiness.start()
        return self.port

    def _bind(self) -> int:
        """Listen on `listen`, over TLS if configured. SettingError (one line) if the address
        is in use or not this host's."""
        host, sep, port = self.s.listen.rpartition(":")
        if not sep or not port.isdigit():
            raise SettingError("listen", f"{self.s.listen!r} is not host:port")
        check_bindable("listen", host, int(port))
        try:
            if self.tls is not None:
                return self.server.add_secure_port(self.s.listen, self.tls.credentials())
            return self.server.add_insecure_port(self.s.listen)
        except RuntimeError:
            raise SettingError("listen", f"cannot listen on {self.s.listen} (in use, or not an "
                               "address of this host)") from None

    async def _listen(self) -> None:
        """Pub/sub from the other replicas: new work in a pool, batches cancelled."""
        work = self.queues.work_channel
        while True:
            pubsub = self.pubsub_redis.pubsub()
            try:
                await pubsub.subscribe(work, self.cancel_channel)
                async for msg in pubsub.listen():
                    if msg["type"] != "message":
                        continue
                    channel, data = msg["channel"].decode(), msg["data"].decode()
                    if channel == work:
                        self.dispatcher.wake(data)
                    else:
                        self.dispatcher.on_cancel_message(data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pub/sub connection lost (%s); reconnecting", type(exc).__name__)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _publish_workers(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.registry.publish(list(self.dispatcher.pools.values()))
            await asyncio.sleep(1.0)

    async def drain(self) -> None:
        """SIGTERM: NOT_SERVING first, then finish or hand back the work, then stop."""
        log.info("draining (grace %.0fs)", self.s.drain_seconds)
        await self.health.enter_graceful_shutdown()
        await self.dispatcher.drain(self.s.drain_seconds)
        await self.stop(grace=1.0)

    async def stop(self, grace: float = 0.0) -> None:
        await self.readiness.stop()
        await self.probes.stop()
        if self.server is not None:
            await self.server.stop(grace)
        await self.follower.stop()
        await self.dispatcher.stop()
        await self.outputs.stop()
        for task in (self._listener, self._publisher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        with contextlib.suppress(Exception):
            await self.leases.aclose()
        await self.redis.aclose()
        await self.pubsub_redis.aclose()
