"""`python -m gen_worker` / `imagemesh-gen-worker`: one generation worker until SIGTERM."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import httpx

from imagemesh.config import load, parse_mapping
from imagemesh.process import configure_logging, serve_metrics
from imagemesh.podcost import PodDeletionCost
from imagemesh.uploads import ObjectLink
from imagemesh.worker import HealthServer, WorkerRuntime, serve

from .executor import GenerateExecutor
from .providers import build_providers
from .providers.http import new_client
from .providers.local import LocalProvider
from .retry import RetryPolicy
from .settings import WorkerSettings


async def amain(s: WorkerSettings) -> int:
    http = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=0), timeout=30.0)
    # Adapters keep their own sharded connection pools: one shared httpx pool costs CPU that
    # grows with the square of its connections (encode/httpcore#1035). `http` is for inlining.
    providers = build_providers({"replicate": s.replicate_base_url, "fal": s.fal_base_url,
                                 "openai": s.openai_base_url})
    providers["replicate"].prefer_wait = max(0, min(60, s.replicate_prefer_wait))
    providers["local"] = LocalProvider(latency=s.local_latency_ms / 1000)
    # Uploads to presigned URLs get sharded pools too (one per 4 slots), for the same reason.
    storage_http = [new_client(max_connections=8) for _ in range(max(1, s.capacity // 4))]
    objects = ObjectLink(http=storage_http, api_key=s.api_key)
    executor = GenerateExecutor(providers, policy=RetryPolicy(max_tries=s.max_tries), http=http,
                                inline_max_bytes=s.inline_max_bytes, allow_private_urls=s.allow_private_urls,
                                default_models=parse_mapping(s.default_models), objects=objects)
    runtime = WorkerRuntime(gateway=s.gateway, pool="generate", capacity=s.capacity, executor=executor,
                            worker_id=s.worker_id or f"gen-{socket.gethostname()}-{os.getpid()}",
                            api_key=s.api_key, device="remote", providers=tuple(providers),
                            heartbeat=s.heartbeat_interval,
                            deletion_cost=PodDeletionCost.from_environment())
    objects.channel = lambda: runtime.channel  # outputs go to storage beside the Connect stream
    health = HealthServer(s.health_port)
    await health.start()
    await serve(runtime, health, s.drain_seconds)
    for provider in providers.values():
        await provider.aclose()
    await objects.aclose()
    for client in storage_http:
        await client.aclose()
    await http.aclose()
    return 0


def main(argv: list[str] | None = None) -> None:
    settings = load(WorkerSettings, argv, prog="imagemesh-gen-worker")
    configure_logging(settings.log_level)
    serve_metrics(settings.metrics_port)
    sys.exit(asyncio.run(amain(settings)))


if __name__ == "__main__":
    main()
