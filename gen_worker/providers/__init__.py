"""Provider adapters by name, built from settings.

`build_providers(base_urls)` returns {"replicate", "fal", "openai"} adapters; the generation
worker adds "local". `base_urls` is a mapping like {"replicate": "https://...", ...} (keys may also
be spelled `replicate_base_url`, as settings fields are); a missing or empty entry takes the
public default.
"""

from __future__ import annotations

from typing import Any, Mapping

import httpx

from gen_worker.providers.base import GenerateRequest, Output, Provider
from gen_worker.providers.fal import DEFAULT_BASE_URL as FAL_BASE_URL, FalProvider
from gen_worker.providers.inline import DEFAULT_MAX_BYTES, inline_outputs
from gen_worker.providers.openai import DEFAULT_BASE_URL as OPENAI_BASE_URL, OpenAIProvider
from gen_worker.providers.replicate import DEFAULT_BASE_URL as REPLICATE_BASE_URL, ReplicateProvider

DEFAULT_BASE_URLS = {
    "replicate": REPLICATE_BASE_URL,
    "fal": FAL_BASE_URL,
    "openai": OPENAI_BASE_URL,
}
ADAPTERS = {"replicate": ReplicateProvider, "fal": FalProvider, "openai": OpenAIProvider}


def build_providers(base_urls: Mapping[str, str] | None = None, *,
                    client: httpx.AsyncClient | None = None,
                    **adapter_options: Any) -> dict[str, Provider]:
    """One adapter per hosted API. `client`: share one httpx client (the caller closes it);
    None: each adapter owns a client (closed by its `aclose`). `adapter_options` go to every
    adapter (`poll_initial`, `poll_max`, `cancel_timeout`, `poll_error_budget`, `shards`,
    `max_connections`)."""
    base_urls = base_urls or {}
    providers: dict[str, Provider] = {}
    for name, cls in ADAPTERS.items():
        url = base_urls.get(name) or base_urls.get(f"{name}_base_url") or DEFAULT_BASE_URLS[name]
        providers[name] = cls(url, client=client, **adapter_options)
    return providers


__all__ = ["GenerateRequest", "Output", "Provider", "build_providers", "inline_outputs",
           "DEFAULT_MAX_BYTES", "DEFAULT_BASE_URLS", "ReplicateProvider", "FalProvider",
           "OpenAIProvider"]
