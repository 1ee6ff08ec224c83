"""The gateway's settings (each one a flag and an IMAGEMESH_* variable: see `--help`).

Fields are checked one by one as they are read (`check=`); `validate()` then checks what depends
on several of them, chiefly that every provider name in a mapping is one the mesh offers, so a
typo (`replicat=8`) stops the gateway instead of being ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imagemesh.config import (PROVIDERS, CommonSettings, SettingError, address, at_least, check_names,
                              mapping_of, parse_list, parse_mapping, port, positive, redis_url, setting)


def _providers(text: str) -> str:
    names = parse_list(text)
    if not names:
        raise ValueError("no provider named")
    check_names(names, PROVIDERS)
    return text


@dataclass
class GatewaySettings(CommonSettings):
    """ImageMesh gateway: accepts batches, dispatches them to workers, streams results back."""

    listen: str = setting("127.0.0.1:50051", "gRPC address to listen on (port 0: a free port, printed at start); "
                                             "health is served here too", check=address)
    health_port: int = setting(8080, "Port of a plaintext gRPC health service for probes, which can't speak TLS "
                                     "(0: a free port; -1: off). SERVING while Redis answers; 'liveness' while running",
                               check=port)
    tls_cert: str = setting("", "Server certificate chain (PEM); with IMAGEMESH_TLS_KEY turns TLS on (empty: plaintext). "
                                "Re-read when the file changes")
    tls_key: str = setting("", "The private key (PEM) of IMAGEMESH_TLS_CERT")
    tls_client_ca: str = setting("", "CA certificate (PEM) client certificates must chain to: mutual TLS, every caller "
                                     "and worker must present one (empty: not asked)")
    redis_url: str = setting("redis://127.0.0.1:6379/0", "Redis holding tasks, queues, events and leases",
                             check=redis_url)
    redis_wait: float = setting(10.0, "Seconds a starting gateway waits for Redis before it gives up (exit 2)",
                                check=at_least(0))
    redis_prefix: str = setting("im", "Prefix of every Redis key")
    api_keys: str = setting("", "Client keys, hashed: comma-separated role:sha256hex or name:role:sha256hex",
                            secret=True)
    api_keys_file: str = setting("", "File with one hashed key entry per line (added to --api-keys)")
    secret_key: str = setting("", "Fernet key sealing callers' tokens; the same on every gateway (required unless "
                                  "IMAGEMESH_SINGLE_INSTANCE)", secret=True)
    single_instance: bool = setting(False, "Run without IMAGEMESH_SECRET_KEY, sealing with a random key: one gateway "
                                           "only, sealed tokens lost on restart (dev)")
    providers: str = setting("local,replicate,fal,openai", "Providers the mesh offers", check=_providers)
    default_providers: str = setting("local", "Provider order for tasks that name none")
    key_limits: str = setting("local=0,replicate=8,fal=4,openai=4", "Default concurrency limit per provider key (0: not limited)",
                              check=mapping_of(int, minimum=0))
    key_daily_budgets: str = setting("", "Optional predictions per key per UTC day, per provider (e.g. replicate=1000); past it tasks fail RATE_LIMITED",
                                     check=mapping_of(int, minimum=0))
    key_aliases: str = setting("", "Names for key ids in metrics and admin output: provider:fingerprint=alias,...",
                               check=mapping_of(str))
    allow_server_tokens: bool = setting(False, "Let client (non-admin) keys use the server's provider tokens")
    replicate_token: str = setting("", "Server token for Replicate", secret=True)
    fal_token: str = setting("", "Server token for fal", secret=True)
    openai_token: str = setting("", "Server token for the OpenAI-style API", secret=True)
    lease_ttl: float = setting(10.0, "Seconds a lease lives without renewal", check=positive)
    max_job_runtime: float = setting(600.0, "Longest a provider job may run; a lost holder's lease counts this long",
                                     check=positive)
    hedge_delay: float = setting(3.0, "Seconds before a raced task (race: true) also starts its next provider",
                                 check=at_least(0))
    max_attempts: int = setting(3, "Attempts per task (worker lost, lease lost, fallback) before it fails",
                                check=at_least(1))
    max_batch_tasks: int = setting(1000, "Tasks per batch", check=at_least(1))
    max_queued_per_tenant: int = setting(100_000, "Unfinished tasks one tenant may have queued (RESOURCE_EXHAUSTED past it)",
                                         check=at_least(1))
    max_queued_bytes_per_tenant: int = setting(512 * 1024 * 1024, "Input bytes one tenant may have queued",
                                               check=at_least(1))
    max_streams_per_tenant: int = setting(256, "Client streams (SubmitBatch, Stream, WatchBatch) one tenant may hold open on "
                                               "this gateway; past it RESOURCE_EXHAUSTED", check=at_least(1))
    max_streams: int = setting(4096, "Client streams this gateway holds open, all tenants together; past it "
                                     "RESOURCE_EXHAUSTED", check=at_least(1))
    retention: float = setting(86400.0, "Seconds results and batch events are kept", check=positive)
    drain_seconds: float = setting(30.0, "Grace for in-flight work on SIGTERM", check=at_least(0))
    heartbeat_interval: float = setting(2.0, "Seconds between worker heartbeats", check=positive)
    tenant_weights: str = setting("", "Share of a key each tenant gets when several wait for it (default 1 each), "
                                      "e.g. team-a=2,team-b=1", check=mapping_of(float, minimum=0.01))
    queue_idle: float = setting(60.0, "Seconds a tenant's queue under a key stays empty before it is removed "
                                      "(gateways stop polling it)", check=positive)
    max_keys_per_tenant: int = setting(32, "Distinct provider keys (tokens) one tenant may use within an hour; past "
                                           "it submissions answer RESOURCE_EXHAUSTED", check=at_least(1))
    accept_timeout: float = setting(30.0, "Seconds a SubmitBatch call may take to write a batch; past it, a "
                                          "resubmission of the same batch id takes over (the first is presumed dead)",
                                    check=positive)
    max_message_bytes: int = setting(16 * 1024 * 1024, "Largest gRPC message accepted or sent (large inputs: "
                                                      "image_url or Stream)", check=at_least(1024))
    metrics_port: int = setting(9464, "Port of the Prometheus /metrics endpoint, plain HTTP (0: a free port; -1: off)",
                                check=port)
    storage_url: str = setting("", "Where outputs and uploaded inputs are stored: a directory (empty: ~/.local/share/imagemesh/outputs; "
                                   "shared by every gateway), s3://BUCKET[/PREFIX], or none (outputs inline in results, capped)")
    storage_endpoint: str = setting("", "S3 endpoint URL (empty: AWS in storage_region), e.g. http://seaweedfs:8333 or "
                                        "https://ACCOUNT.r2.cloudflarestorage.com")
    storage_public_endpoint: str = setting("", "S3 endpoint in the URLs given to workers and clients (empty: storage_endpoint)")
    storage_region: str = setting("us-east-1", "S3 region")
    storage_access_key_id: str = setting("", "S3 access key id (empty: the AWS_* environment variables or the instance's role)",
                                         secret=True)
    storage_secret_access_key: str = setting("", "S3 secret access key", secret=True)
    storage_url_ttl: float = setting(3600.0, "Seconds a download URL in a result works (S3); signed afresh each time a batch "
                                             "is read", check=positive)
    max_output_bytes: int = setting(256 * 1024 * 1024, "Largest output stored; a larger one fails its task OUTPUT_TOO_LARGE",
                                    check=at_least(1))
    inline_max_bytes: int = setting(1024 * 1024, "Largest output returned inline (inline_outputs, or every output with "
                                                 "storage none)", check=at_least(0))
    max_upload_bytes: int = setting(64 * 1024 * 1024, "Largest input uploaded with UploadInput", check=at_least(1))
    max_stored_bytes_per_tenant: int = setting(50 * 1024 ** 3, "Stored bytes (outputs and uploads) one tenant may hold; past "
                                                               "it submissions answer RESOURCE_EXHAUSTED (0: no quota)",
                                               check=at_least(0))
    sweep_interval: float = setting(30.0, "Seconds between sweeps that delete stored objects past their retention",
                                    check=positive)

    def validate(self) -> None:
        super().validate()
        offered = parse_list(self.providers)
        for name in ("default_providers", "key_limits", "key_daily_budgets"):
            text = getattr(self, name)
            names = parse_list(text) if name == "default_providers" else parse_mapping(text)
            try:
                check_names(names, offered)
            except ValueError as exc:
                raise SettingError(name, f"{exc} — a provider must be in --providers") from None
        if not parse_list(self.default_providers):
            raise SettingError("default_providers", "no provider named")
        for key in parse_mapping(self.key_aliases):
            provider, sep, fingerprint = key.partition(":")
            if not sep or not fingerprint:
                raise SettingError("key_aliases", f"{key!r} is not a key id (provider:fingerprint, as ListKeys shows)")
            try:
                check_names([provider], offered)
            except ValueError as exc:
                raise SettingError("key_aliases", str(exc)) from None
        self._validate_keys()

    def _validate_keys(self) -> None:
        from imagemesh.auth import ApiKeys
        from imagemesh.credentials import Sealer

        try:
            ApiKeys.parse(self.api_keys)
        except ValueError as exc:
            raise SettingError("api_keys", str(exc)) from None
        if self.api_keys_file:
            try:
                ApiKeys.parse(Path(self.api_keys_file).read_text())
            except OSError as exc:
                raise SettingError("api_keys_file", f"cannot read {self.api_keys_file!r}: {exc.strerror}") from None
            except ValueError as exc:
                raise SettingError("api_keys_file", str(exc)) from None
        if self.secret_key:
            try:
                Sealer(self.secret_key)
            except ValueError:
                raise SettingError("secret_key", "not a Fernet key (32 url-safe base64-encoded bytes); make one with "
                                   "python -c 'from cryptography.fernet import Fernet; "
                                   "print(Fernet.generate_key().decode())'") from None
