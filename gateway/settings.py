"""The gateway's settings (each one a flag and an IMAGEMESH_* variable: see `--help`)."""

from __future__ import annotations

from dataclasses import dataclass

from imagemesh.config import CommonSettings, setting


@dataclass
class GatewaySettings(CommonSettings):
    """ImageMesh gateway: accepts batches, dispatches them to workers, streams results back."""

    listen: str = setting("127.0.0.1:50051", "gRPC address to listen on (port 0: a free port, printed at start); "
                                             "health is served here too")
    health_port: int = setting(8080, "Port of a plaintext gRPC health service for probes, which can't speak TLS "
                                     "(0: a free port; -1: off). SERVING while Redis answers; 'liveness' while running")
    tls_cert: str = setting("", "Server certificate chain (PEM); with IMAGEMESH_TLS_KEY turns TLS on (empty: plaintext). "
                                "Re-read when the file changes")
    tls_key: str = setting("", "The private key (PEM) of IMAGEMESH_TLS_CERT")
    tls_client_ca: str = setting("", "CA certificate (PEM) client certificates must chain to: mutual TLS, every caller "
                                     "and worker must present one (empty: not asked)")
    redis_url: str = setting("redis://127.0.0.1:6379/0", "Redis holding tasks, queues, events and leases")
    redis_prefix: str = setting("im", "Prefix of every Redis key")
    api_keys: str = setting("", "Client keys, hashed: comma-separated role:sha256hex or name:role:sha256hex")
    api_keys_file: str = setting("", "File with one hashed key entry per line (added to --api-keys)")
    secret_key: str = setting("", "Fernet key sealing callers' tokens; the same on every gateway (required unless "
                                  "IMAGEMESH_SINGLE_INSTANCE)")
    single_instance: bool = setting(False, "Run without IMAGEMESH_SECRET_KEY, sealing with a random key: one gateway "
                                           "only, sealed tokens lost on restart (dev)")
    providers: str = setting("local,replicate,fal,openai", "Providers the mesh offers")
    default_providers: str = setting("local", "Provider order for tasks that name none")
    key_limits: str = setting("local=0,replicate=8,fal=4,openai=4", "Default concurrency limit per provider key (0: not limited)")
    key_daily_budgets: str = setting("", "Optional predictions per key per UTC day, per provider (e.g. replicate=1000); past it tasks fail RATE_LIMITED")
    key_aliases: str = setting("", "Names for key ids in metrics and admin output: provider:fingerprint=alias,...")
    allow_server_tokens: bool = setting(False, "Let client (non-admin) keys use the server's provider tokens")
    replicate_token: str = setting("", "Server token for Replicate")
    fal_token: str = setting("", "Server token for fal")
    openai_token: str = setting("", "Server token for the OpenAI-style API")
    lease_ttl: float = setting(10.0, "Seconds a lease lives without renewal")
    max_job_runtime: float = setting(600.0, "Longest a provider job may run; a lost holder's lease counts this long")
    hedge_delay: float = setting(3.0, "Seconds before a raced task (race: true) also starts its next provider")
    max_attempts: int = setting(3, "Attempts per task (worker lost, lease lost, fallback) before it fails")
    max_batch_tasks: int = setting(1000, "Tasks per batch")
    max_queued_per_tenant: int = setting(100_000, "Unfinished tasks one tenant may have queued (RESOURCE_EXHAUSTED past it)")
    max_queued_bytes_per_tenant: int = setting(512 * 1024 * 1024, "Input bytes one tenant may have queued")
    retention: float = setting(86400.0, "Seconds results and batch events are kept")
    drain_seconds: float = setting(30.0, "Grace for in-flight work on SIGTERM")
    heartbeat_interval: float = setting(2.0, "Seconds between worker heartbeats")
    accept_timeout: float = setting(30.0, "Seconds a SubmitBatch call may take to write a batch; past it, a resubmission of the same batch id takes over (the first call is presumed dead)")
    max_message_bytes: int = setting(16 * 1024 * 1024, "Largest gRPC message accepted or sent (large inputs: "
                                                      "image_url or Stream)")
    metrics_port: int = setting(9464, "Port of the Prometheus /metrics endpoint, plain HTTP (0: a free port; -1: off)")
