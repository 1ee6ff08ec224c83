"""Runs one generation attempt: the chosen provider, our retry loop, outputs named and shaped.

The provider and token were chosen by the gateway (under that key's lease); this module never
falls back to another provider on its own, because another provider needs another lease. It
reports `fallback_ok` instead and the gateway re-queues the task on the next provider.
"""

from __future__ import annotations

import time

import httpx
from google.protobuf.json_format import MessageToDict

from imagemesh import filenames
from imagemesh.errors import TaskFailure, Unavailable
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import worker_pb2 as wpb
from imagemesh.worker import failed

from .providers import inline_outputs
from .providers.base import GenerateRequest, Output, Provider
from .providers.local import MODEL as LOCAL_MODEL
from .retry import RetryPolicy, with_retries


class GenerateExecutor:
    def __init__(self, providers: dict[str, Provider], *, policy: RetryPolicy,
                 http: httpx.AsyncClient, inline_max_bytes: int, allow_private_urls: bool,
                 default_models: dict[str, str] | None = None, fetch_timeout: float = 30.0) -> None:
        self.providers = providers
        self.default_models = default_models or {}
        self.policy = policy
        self.http = http
        self.inline_max_bytes = inline_max_bytes
        self.allow_private_urls = allow_private_urls
        self.fetch_timeout = fetch_timeout

    async def run(self, a: wpb.Assignment) -> wpb.AttemptResult:
        provider = self.providers.get(a.provider)
        if provider is None:
            return failed(a, Unavailable(f"this worker has no adapter for provider {a.provider!r}"))
        spec = a.generate
        model = spec.model or self.default_models.get(a.provider, "")
        request = GenerateRequest(prompt=spec.prompt, model=model, num_outputs=max(1, spec.num_outputs),
                                  inputs=MessageToDict(spec.input) if spec.HasField("input") else {})
        budget = a.budget_ms / 1000 if a.budget_ms > 0 else 600.0
        deadline = time.monotonic() + budget
        token = a.token or None
        try:
            outputs, tries = await with_retries(lambda: provider.generate(request, token, deadline),
                                                policy=self.policy, deadline=deadline)
            if spec.inline_outputs and any(o.url for o in outputs):
                # Each fetch has a total deadline, never past the attempt's own.
                timeout = max(0.1, min(self.fetch_timeout, deadline - time.monotonic()))
                outputs = await inline_outputs(outputs, self.http, max_bytes=self.inline_max_bytes,
                                               allow_private=self.allow_private_urls, timeout=timeout)
        except TaskFailure as exc:
            return failed(a, exc, tries=getattr(exc, "tries", 1))
        return wpb.AttemptResult(
            attempt_id=a.attempt_id, task_id=a.task_id, attempt=a.attempt, fence=a.fence,
            state=pb.SUCCEEDED, provider=a.provider, tries=tries, device="remote",
            model=LOCAL_MODEL if a.provider == "local" else model,
            files=[self._file(a.output_filename, o, i, len(outputs)) for i, o in enumerate(outputs)])

    @staticmethod
    def _file(name: str, o: Output, index: int, count: int) -> pb.OutputFile:
        named = filenames.numbered(filenames.with_content_type(name, o.content_type or "image/png"), index, count)
        f = pb.OutputFile(filename=named, content_type=o.content_type, width=o.width, height=o.height,
                          url_expires_at_ms=o.url_expires_at_ms)
        if o.data is not None:
            f.data = o.data
        elif o.url:
            f.url = o.url
        return f
