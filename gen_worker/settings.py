"""The generation worker's settings (each one a flag and an IMAGEMESH_* variable: see `--help`)."""

from __future__ import annotations

from dataclasses import dataclass

from imagemesh.config import PROVIDERS, WorkerRuntimeSettings, at_least, http_url, mapping_of, port, setting


@dataclass
class WorkerSettings(WorkerRuntimeSettings):
    """ImageMesh generation worker: runs generate tasks against the hosted image APIs."""

    # -- the worker runtime (imagemesh.config.WorkerRuntimeSettings), with this worker's ports --
    metrics_port: int = setting(9465, "Port of the Prometheus /metrics endpoint, plain HTTP (0: a free port; -1: off)",
                                check=port)
    health_port: int = setting(8081, "Port of the gRPC health service, plaintext (0: a free port; -1: off). "
                                     "SERVING only while connected to a gateway; service 'liveness' while the process runs",
                               check=port)

    local_latency_ms: int = setting(0, "Latency of the offline `local` renderer (demos, benchmarks)", check=at_least(0))
    replicate_base_url: str = setting("https://api.replicate.com", "Replicate API base URL", check=http_url)
    fal_base_url: str = setting("https://queue.fal.run", "fal queue API base URL", check=http_url)
    openai_base_url: str = setting("https://api.openai.com", "OpenAI-style images API base URL", check=http_url)
    replicate_prefer_wait: int = setting(5, "Seconds Replicate may hold a create call (Prefer: wait); short so a lost race frees its slot soon",
                                         check=at_least(0))
    default_models: str = setting("replicate=black-forest-labs/flux-schnell,fal=fal-ai/flux/schnell,openai=dall-e-3",
                                  "Model per provider for tasks that name none (provider=model,...)",
                                  check=mapping_of(str, names=PROVIDERS))
    max_tries: int = setting(4, "Provider calls per attempt (retries of retryable errors included)", check=at_least(1))
    inline_max_bytes: int = setting(20 * 1024 * 1024, "Largest output fetched for inline_outputs", check=at_least(1))
    fetch_timeout: float = setting(30.0, "Total seconds one inline_outputs fetch may take (connect, redirects and body)",
                                   check=at_least(0.1))
    allow_private_urls: bool = setting(False, "Let inline_outputs fetch from private/loopback addresses (tests, private deployments)")
