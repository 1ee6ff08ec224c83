"""Which provider and which key a task's attempt goes to.

A generate task names providers in fallback order (or gets the server's default order). At
submit time each one is checked against the caller's credentials (see
imagemesh.credentials.resolve_token); the first usable one whose circuit is not open gets the
first attempt. The queue of an attempt is the queue of its lease key, `provider:fingerprint`.

A provider whose configured limit is 0 (the offline `local` renderer by default) is not leased
at all: its keys have no limit to protect, and skipping the lease keeps it off the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagemesh.circuit import CircuitBreaker
from imagemesh.credentials import Sealer, resolve_token
from imagemesh.errors import AuthFailed, InvalidInput
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import worker_pb2 as wpb

from .queues import QueueName

ENHANCE_KEY = "gpu"
MAX_KEY_SERIES = 50


@dataclass(frozen=True)
class RoutingSettings:
    providers: tuple[str, ...]              # providers this mesh has adapters for
    default_providers: tuple[str, ...]      # order used when a task names none
    limits: dict[str, int]                  # provider -> default key limit (0: not leased)
    server_tokens: dict[str, str]
    allow_server_tokens: bool
    aliases: dict[str, str]                 # key id -> alias (server keys get the provider name)


class Routing:
    def __init__(self, settings: RoutingSettings, sealer: Sealer) -> None:
        self.s = settings
        self.sealer = sealer
        self.circuits = {p: CircuitBreaker(p) for p in settings.providers}
        self._aliases = dict(settings.aliases)
        self._labelled: set[str] = set()
        for provider, token in settings.server_tokens.items():
            self._aliases.setdefault(sealer.key_id(provider, token), provider)

    # -- providers ---------------------------------------------------------------------------
    def providers_of(self, task: pb.Task) -> list[str]:
        return list(task.generate.providers) or list(self.s.default_providers)

    def provider_at(self, task: pb.Task, index: int) -> str:
        providers = self.providers_of(task)
        return providers[min(index, len(providers) - 1)]

    def next_provider(self, task: pb.Task, index: int, *, probe: bool = True) -> int | None:
        """The next provider after `index` whose circuit admits a call, or None. With
        probe=False only asks (a half-open circuit's single probe is not taken)."""
        providers = self.providers_of(task)
        for i in range(index + 1, len(providers)):
            breaker = self.circuits[providers[i]]
            if (breaker.allow() if probe else breaker.state != "open"):
                return i
        return None

    def first_provider(self, task: pb.Task) -> int:
        providers = self.providers_of(task)
        for i, p in enumerate(providers):
            if self.circuits[p].allow():
                return i
        return 0  # every circuit open: try the first anyway, its failure is the answer

    def validate_providers(self, task: pb.Task, *, is_admin: bool, request_tokens: dict[str, str]) -> None:
        """Raises InvalidInput for an unknown provider, AuthFailed when the caller has no token
        for any of them."""
        providers = self.providers_of(task)
        for name in providers:
            if name not in self.s.providers:
                raise InvalidInput(f"generate.providers: unknown provider {name!r} "
                                   f"(this mesh has: {', '.join(self.s.providers)})")
        usable = [p for p in providers if self._token_for(p, is_admin, request_tokens) is not None]
        if not usable:
            raise AuthFailed(f"no credentials for {', '.join(providers)}: pass a token in "
                             "SubmitBatchRequest.credentials or use an admin key", retryable=False)

    def _token_for(self, provider: str, is_admin: bool, request_tokens: dict[str, str]) -> str | None:
        if not self.needs_token(provider):
            return ""
        return resolve_token(provider, is_admin=is_admin, request_tokens=request_tokens,
                             server_tokens=self.s.server_tokens,
                             allow_server_tokens=self.s.allow_server_tokens)

    def usable_providers(self, task: pb.Task, *, is_admin: bool, request_tokens: dict[str, str]) -> list[str]:
        return [p for p in self.providers_of(task) if self._token_for(p, is_admin, request_tokens) is not None]

    @staticmethod
    def needs_token(provider: str) -> bool:
        return provider != "local"

    def server_token(self, provider: str) -> str | None:
        return self.s.server_tokens.get(provider)

    # -- keys and queues ---------------------------------------------------------------------
    def key_id(self, provider: str, token: str | None) -> str:
        return self.sealer.key_id(provider, token if self.needs_token(provider) else None)

    def is_leased(self, provider: str) -> bool:
        return bool(provider) and self.s.limits.get(provider, 0) > 0

    def is_leased_key(self, key_id: str) -> bool:
        return key_id != ENHANCE_KEY and self.is_leased(key_id.split(":", 1)[0])

    def default_limit(self, key_id: str) -> int:
        return self.s.limits.get(key_id.split(":", 1)[0], 0)

    def alias(self, key_id: str) -> str:
        return self._aliases.get(key_id, key_id)

    def metric_label(self, key_id: str) -> str:
        """The `key` label of per-key series: the alias, or the key id (a fingerprint, never a
        token) for the first MAX_KEY_SERIES keys seen, then "other": bounded cardinality."""
        label = self._aliases.get(key_id)
        if label is not None:
            return label
        if key_id in self._labelled or len(self._labelled) < MAX_KEY_SERIES:
            self._labelled.add(key_id)
            return key_id
        return "other"

    def resolve_alias(self, name: str) -> str:
        for key_id, alias in self._aliases.items():
            if alias == name:
                return key_id
        return name

    def queue_at_submit(self, task: pb.Task, provider_index: int, token: str | None, *, tenant: str,
                        klass: str) -> QueueName:
        """The flow of a task's first attempt: its key's queue for its tenant and class."""
        if task.HasField("enhance"):
            return QueueName("enhance", ENHANCE_KEY, tenant, klass)
        provider = self.provider_at(task, provider_index)
        return QueueName("generate", self.key_id(provider, token), tenant, klass)

    async def free_slots(self, key_id: str, leases) -> int | None:
        """Free slots of a key right now (None: unlimited)."""
        if key_id == ENHANCE_KEY or not self.is_leased(key_id.split(":", 1)[0]):
            return None
        state = await leases.state(key_id)
        if state.quarantined:
            return 0
        return max(0, state.limit - state.in_use)

    # -- outcomes ----------------------------------------------------------------------------
    def record(self, provider: str, result: wpb.AttemptResult) -> None:
        """Feed the provider's circuit: only failures that say something about its health
        (see imagemesh.circuit.classify: 429s and input errors are neutral)."""
        breaker = self.circuits.get(provider)
        if breaker is None:
            return
        if result.state == pb.SUCCEEDED:
            breaker.record(True)
        elif result.state == pb.FAILED and result.error.code in ("PROVIDER_ERROR", "UNAVAILABLE", "TIMEOUT"):
            breaker.record(False)
        else:
            # Neutral (cancelled, bad input, bad token, 429): if this was the half-open probe,
            # free it so the next call can probe.
            breaker.release_probe()
