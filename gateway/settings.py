"""The gateway's settings (each one a flag and an IMAGEMESH_* variable: see `--help`)."""

from __future__ import annotations

from dataclasses import dataclass

from imagemesh.config import CommonSettings, setting


@dataclass
class GatewaySettings(CommonSettings):
    """ImageMesh gateway: accepts batches, dispatches them to workers, streams results back."""

    listen: str = setting("127.0.0.1:50051", "gRPC address to listen on (port 0: a free port, printed at start)")
    redis_url: str = setting("redis://127.0.0.1:6379/0", "Redis holding tasks, queues, events and leases")
    redis_prefix: str = setting("im", "Prefix of every Redis key")
    api_keys: str = setting("", "Client keys, hashed: comma-separated role:sha256hex or name:role:sha256hex")
    api_keys_file: str = setting("", "File with one hashed key entry per line (added to --api-keys)")
    secret_key: str = setting("", "Fernet key sealing callers' tokens; the same on every gateway (random if empty: one gateway only)")
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
    max_message_bytes: int = setting(64 * 1024 * 1024, "Largest gRPC message accepted")
    storage_url: str = setting("", "Where outputs and uploaded inputs are stored: a directory (empty: ~/.local/share/imagemesh/outputs; "
                                   "shared by every gateway), s3://BUCKET[/PREFIX], or none (outputs inline in results, capped)")
    storage_endpoint: str = setting("", "S3 endpoint URL (empty: AWS in storage_region), e.g. http://seaweedfs:8333 or https://ACCOUNT.r2.cloudflarestorage.com")
    storage_public_endpoint: str = setting("", "S3 endpoint in the URLs given to workers and clients (empty: storage_endpoint)")
    storage_region: str = setting("us-east-1", "S3 region")
    storage_access_key_id: str = setting("", "S3 access key id (empty: the AWS_* environment variables or the instance's role)")
    storage_secret_access_key: str = setting("", "S3 secret access key")
    storage_url_ttl: float = setting(3600.0, "Seconds a download URL in a result works (S3); signed afresh each time a batch is read")
    max_output_bytes: int = setting(256 * 1024 * 1024, "Largest output stored; a larger one fails its task OUTPUT_TOO_LARGE")
    inline_max_bytes: int = setting(1024 * 1024, "Largest output returned inline (inline_outputs, or every output with storage none)")
    max_upload_bytes: int = setting(64 * 1024 * 1024, "Largest input uploaded with UploadInput")
    max_stored_bytes_per_tenant: int = setting(50 * 1024 ** 3, "Stored bytes (outputs and uploads) one tenant may hold; past it submissions answer RESOURCE_EXHAUSTED (0: no quota)")
    sweep_interval: float = setting(30.0, "Seconds between sweeps that delete stored objects past their retention")
