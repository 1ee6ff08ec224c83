"""`python -m gen_worker` / `imagemesh-gen-worker`: one generation worker until SIGTERM.

A bad setting, or a health or metrics port that cannot be bound, ends it at start with one line
naming the setting and exit status 2.
"""

from __future__ import annotations

import os
import socket

import httpx

from imagemesh.config import load, parse_mapping
from imagemesh.podcost import PodDeletionCost
from imagemesh.process import run, start_health
from imagemesh.uploads import ObjectLink
from imagemesh.worker import WorkerRuntime, dial_tls, serve

from .executor import GenerateExecutor
from .providers import build_providers
from .providers.http import new_client
from .providers.local import LocalProvider
from .retry import RetryPolicy
from .settings import WorkerSettings

PROG = "imagemesh-gen-worker"


async def amain(s: WorkerSettings) -> int:
    tls = dial_tls(s)  # FatalError now, not after the first connection attempt
    http = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=0), timeout=30.0)
    # Adapters keep their own sharded connection pools: one shared httpx pool costs CPU that
    # grows with the square of its connections (encode/httpcore#1035). `http` is for inlining.
    providers = build_providers({"replicate": s.replicate_base_url, "fal": s.fal_base_url,
                                 "openai": s.openai_base_url})
    providers["replicate"].prefer_wait = max(0, min(60, s.replicate_prefer_wait))
    providers["local"] = LocalProvider(latency=s.local_latency_ms / 1000)
    # Uploads to presigned URLs get sharded pools too (one per 4 slots), for the same reason.
    storage_http = [new_client(max_connections=8) for _ in range(max(1, s.capacity // 4))]
    objects = ObjectLink(http=storage_http, api_key=s.api_key, max_message_bytes=s.max_message_bytes)
    executor = GenerateExecutor(providers, policy=RetryPolicy(max_tries=s.max_tries), http=http,
                                inline_max_bytes=s.inline_max_bytes, allow_private_urls=s.allow_private_urls,
                                default_models=parse_mapping(s.default_models), objects=objects,
                                fetch_timeout=s.fetch_timeout)
    runtime = WorkerRuntime(gateway=s.gateway, pool="generate", capacity=s.capacity, executor=executor,
                            worker_id=s.worker_id or f"gen-{socket.gethostname()}-{os.getpid()}",
                            api_key=s.api_key, device="remote", providers=tuple(providers),
                            heartbeat=s.heartbeat_interval, max_message_bytes=s.max_message_bytes,
                            deletion_cost=PodDeletionCost.from_environment(), tls=tls)
    objects.channel = lambda: runtime.channel  # outputs go to storage beside the Connect stream
    health = await start_health(s.health_port, s.health_host)
    await serve(runtime, health, s.drain_seconds)
    for provider in providers.values():
        await provider.aclose()
    await objects.aclose()
    for client in storage_http:
        await client.aclose()
    await http.aclose()
    return 0


def main(argv: list[str] | None = None) -> None:
    run(PROG, "gen-worker", load(WorkerSettings, argv, prog=PROG), amain)


if __name__ == "__main__":
    main()
