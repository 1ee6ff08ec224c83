"""The one seam between the generation worker and a hosted image API.

An adapter turns a `GenerateRequest` into a list of `Output`s with a single call, or raises a
`imagemesh.errors.TaskFailure` subclass that says whether trying again can help. Adapters make
exactly one logical provider call per `generate()` (polling included) and never retry on their
own: the worker's retry loop owns backoff, so SDK or client retries must stay off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    model: str = ""
    num_outputs: int = 1
    # Model inputs as the caller gave them (width, height, seed, ...), passed through.
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Output:
    url: str | None = None
    data: bytes | None = None
    content_type: str = ""
    width: int = 0
    height: int = 0
    # Unix ms after which `url` stops working; 0 when unknown or never.
    url_expires_at_ms: int = 0


class Provider(Protocol):
    name: str

    async def generate(self, request: GenerateRequest, token: str | None,
                       deadline: float) -> list[Output]:
        """Run one generation. `deadline` is a `time.monotonic()` instant: give up (raise
        `Timeout`, cancelling the remote job where the API allows) when it passes.

        Raises `TaskFailure` subclasses; anything else is treated as a bug (INTERNAL).
        Cancellation (asyncio.CancelledError) must cancel the remote job best-effort and re-raise.
        """
        ...

    async def aclose(self) -> None:
        ...
