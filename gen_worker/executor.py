"""Runs one generation attempt: the chosen provider, our retry loop, outputs named, shaped and
written to storage.

The provider and token were chosen by the gateway (under that key's lease); this module never
falls back to another provider on its own, because another provider needs another lease. It
reports `fallback_ok` instead and the gateway re-queues the task on the next provider.

Outputs go where the assignment says (`imagemesh.uploads`): a provider's output URL is copied
into storage as it downloads (before the URL expires; the body is streamed and capped, never
held whole), rendered bytes are written from memory. The result carries object references.
When the assignment has no targets (storage off) and the caller did not ask for inline
outputs, provider URLs are passed on as they are, as before storage existed.
"""

from __future__ import annotations

import asyncio
import io
import time

import httpx
from google.protobuf.json_format import MessageToDict

from imagemesh import filenames
from imagemesh.errors import TaskFailure, Unavailable
from imagemesh.uploads import Body, ObjectLink
from imagemesh.urlstream import open_url
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import worker_pb2 as wpb
from imagemesh.worker import failed

from .providers import inline_outputs
from .providers.base import GenerateRequest, Output, Provider
from .providers.local import MODEL as LOCAL_MODEL
from .retry import RetryPolicy, with_retries

# Enough of a body's start to read an image's width and height from its header.
SNIFF_BYTES = 64 * 1024


class GenerateExecutor:
    def __init__(self, providers: dict[str, Provider], *, policy: RetryPolicy,
                 http: httpx.AsyncClient, inline_max_bytes: int, allow_private_urls: bool,
                 default_models: dict[str, str] | None = None, objects: ObjectLink | None = None,
                 fetch_timeout: float = 30.0) -> None:
        self.providers = providers
        self.default_models = default_models or {}
        self.policy = policy
        self.http = http
        self.inline_max_bytes = inline_max_bytes
        self.allow_private_urls = allow_private_urls
        self.objects = objects or ObjectLink(http=http, api_key="")
        # Total seconds one fetch of a provider's output may take (never past the attempt's own
        # deadline): a server that trickles bytes can't hold the attempt.
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
            files = await self._files(a, outputs, deadline)
        except TaskFailure as exc:
            return failed(a, exc, tries=getattr(exc, "tries", 1))
        return wpb.AttemptResult(
            attempt_id=a.attempt_id, task_id=a.task_id, attempt=a.attempt, fence=a.fence,
            state=pb.SUCCEEDED, provider=a.provider, tries=tries, device="remote",
            model=LOCAL_MODEL if a.provider == "local" else model, files=files)

    def _fetch_budget(self, deadline: float) -> float:
        return max(0.1, min(self.fetch_timeout, deadline - time.monotonic()))

    async def _files(self, a: wpb.Assignment, outputs: list[Output], deadline: float) -> list[pb.OutputFile]:
        if not len(a.uploads):
            return await self._unstored(a, outputs, deadline)
        # A provider may return more images than asked for: keep what there are targets for.
        outputs = outputs[:len(a.uploads)]
        return [await self._store(a, i, o, len(outputs), deadline) for i, o in enumerate(outputs)]

    async def _store(self, a: wpb.Assignment, index: int, o: Output, count: int, deadline: float) -> pb.OutputFile:
        """Write one output to its target: from memory, or streamed from the provider's URL
        (within the fetch's total deadline: Unavailable past it)."""
        if o.data is not None:
            name = self._name(a.output_filename, o.content_type or "image/png", index, count)
            f = await self.objects.output(a, index, Body.of(o.data), o.content_type or "image/png", name)
            f.width, f.height = o.width, o.height
            return f
        budget = self._fetch_budget(deadline)
        try:
            async with asyncio.timeout(budget):
                async with open_url(self.http, o.url or "", allow_private=self.allow_private_urls,
                                    timeout=budget) as remote:
                    content_type = remote.content_type if remote.content_type.startswith("image/") else o.content_type
                    content_type = content_type or "image/png"
                    sniffed = _Sniffer(remote.chunks)
                    name = self._name(a.output_filename, content_type, index, count)
                    f = await self.objects.output(a, index, Body(sniffed.chunks(), remote.length), content_type, name)
        except TimeoutError:
            raise Unavailable(f"output {index + 1}: copying it from the provider took over {budget:.0f}s") from None
        f.width, f.height = (o.width, o.height) if o.width and o.height else sniffed.size()
        return f

    async def _unstored(self, a: wpb.Assignment, outputs: list[Output], deadline: float) -> list[pb.OutputFile]:
        """Storage is off: bytes inline (capped by the assignment), URLs passed on as they are
        unless the caller asked for the bytes."""
        if a.generate.inline_outputs and any(o.url for o in outputs):
            limit = min(self.inline_max_bytes, a.inline_max_bytes or self.inline_max_bytes)
            outputs = await inline_outputs(outputs, self.http, max_bytes=limit, allow_private=self.allow_private_urls,
                                           timeout=self._fetch_budget(deadline))
        files = []
        for i, o in enumerate(outputs):
            name = self._name(a.output_filename, o.content_type or "image/png", i, len(outputs))
            if o.data is not None:
                f = await self.objects.output(a, i, Body.of(o.data), o.content_type, name)
            else:
                f = pb.OutputFile(filename=name, content_type=o.content_type, url=o.url or "",
                                  url_expires_at_ms=o.url_expires_at_ms)
            f.width, f.height = o.width, o.height
            files.append(f)
        return files

    @staticmethod
    def _name(name: str, content_type: str, index: int, count: int) -> str:
        return filenames.numbered(filenames.with_content_type(name, content_type), index, count)


class _Sniffer:
    """Passes chunks through, keeping the first SNIFF_BYTES to read the image's size from."""

    def __init__(self, chunks) -> None:
        self._chunks = chunks
        self._head = bytearray()

    async def chunks(self):
        async for chunk in self._chunks:
            if len(self._head) < SNIFF_BYTES:
                self._head += chunk[:SNIFF_BYTES - len(self._head)]
            yield chunk

    def size(self) -> tuple[int, int]:
        try:
            from PIL import Image
            with Image.open(io.BytesIO(bytes(self._head))) as image:
                return image.size
        except Exception:  # not an image we can read from its start: size stays unknown
            return 0, 0
