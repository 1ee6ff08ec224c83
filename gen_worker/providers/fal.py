"""fal.ai queue API (https://docs.fal.ai/model-endpoints/queue).

One call: `POST {base}/{model}` queues a request and answers `request_id`, `status_url`,
`response_url`; `GET .../requests/{id}/status` moves through `IN_QUEUE` → `IN_PROGRESS` →
`COMPLETED`; `GET .../requests/{id}` returns the result, `{"images": [{"url", "width", "height",
"content_type"}], ...}`. On timeout, asyncio cancellation (a lost race) or an error after
submission, `PUT .../requests/{id}/cancel` is sent best-effort.

The status and result URLs are taken from the answer only when they are on our configured
origin (the token goes to that origin only); otherwise they are built from the model's app id
(its first two path segments: `fal-ai/flux/dev` → `fal-ai/flux`), as fal documents.
A job that ended in error shows `error` in its status or fails its result GET; the first is
`ProviderFailed(retryable=False)`, the second is mapped like any HTTP answer.
Images may come back as `data:` URIs (fal's sync mode): they are decoded into bytes.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from gen_worker.providers.base import GenerateRequest, Output
from gen_worker.providers.http import HTTPProvider, content_type_for, decode_data_uri
from imagemesh.errors import InvalidInput, ProviderFailed

DEFAULT_BASE_URL = "https://queue.fal.run"


class FalProvider(HTTPProvider):
    name = "fal"

    def __init__(self, base_url: str = DEFAULT_BASE_URL, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self._origin = self._origin_of(self.base_url)

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Key {token}"}

    @staticmethod
    def _origin_of(url: str) -> tuple[str, str]:
        parts = urlsplit(url)
        return parts.scheme.lower(), parts.netloc.lower()

    def _ours(self, url: Any) -> bool:
        return isinstance(url, str) and self._origin_of(url) == self._origin

    async def _generate(self, request: GenerateRequest, token: str,
                        deadline: float) -> list[Output]:
        model = request.model.strip("/")
        segments = model.split("/")
        if len(segments) < 2 or not all(segments):
            raise InvalidInput(f"fal model {request.model!r} is not 'owner/app[/path]'")
        inputs = dict(request.inputs)
        inputs["prompt"] = request.prompt
        inputs["num_images"] = request.num_outputs
        app = "/".join(segments[:2])
        response = await self.submit(
            self.send("POST", f"{self.base_url}/{model}", token=token, deadline=deadline,
                      json=inputs, what="queueing a request"),
            lambda answer: self._cancel_queued(answer, app, token),
            budget=self.cancel_timeout)
        job, status_url, result_url, cancel_url = self._urls(
            self.json_of(response, self.name, "queueing a request"), app)
        finished = False
        try:
            status = await self.poll_until(
                lambda: self._json("GET", status_url, token, deadline, "polling a request"),
                lambda s: s.get("status") == "COMPLETED" or bool(s.get("error")), deadline)
            if status.get("error"):
                finished = True
                raise ProviderFailed(f"fal request failed: {str(status['error'])[:300]}",
                                     retryable=False)
            result = await self._json("GET", result_url, token, deadline, "fetching the result")
            finished = True
        finally:
            if not finished:
                await self.cancel_remote(lambda: self._cancel(cancel_url, token), job)
        return self._outputs(result)

    def _urls(self, queued: dict[str, Any], app: str) -> tuple[str, str, str, str]:
        job = queued.get("request_id")
        if not isinstance(job, str) or not job:
            raise ProviderFailed("fal answered without a request id", retryable=True)
        base = f"{self.base_url}/{app}/requests/{job}"
        status_url = queued["status_url"] if self._ours(queued.get("status_url")) else base + "/status"
        result_url = queued["response_url"] if self._ours(queued.get("response_url")) else base
        cancel_url = queued["cancel_url"] if self._ours(queued.get("cancel_url")) else base + "/cancel"
        return job, status_url, result_url, cancel_url

    async def _cancel_queued(self, answer: Any, app: str, token: str) -> None:
        _, _, _, cancel_url = self._urls(self.json_of(answer, self.name, "queueing a request"), app)
        await self._cancel(cancel_url, token)

    async def _json(self, method: str, url: str, token: str, deadline: float,
                    what: str) -> dict[str, Any]:
        response = await self.send(method, url, token=token, deadline=deadline, what=what)
        return self.json_of(response, self.name, what)

    async def _cancel(self, url: str, token: str) -> None:
        # 400 means "already completed": nothing left to stop.
        await self.send("PUT", url, token=token, deadline=time.monotonic() + self.cancel_timeout,
                        what="cancelling a request", ok=(400,))

    def _outputs(self, result: dict[str, Any]) -> list[Output]:
        images = result.get("images")
        if images is None and isinstance(result.get("image"), dict):
            images = [result["image"]]
        if not isinstance(images, list) or not images:
            raise ProviderFailed("fal result has no images", retryable=False)
        outputs = []
        for image in images:
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                raise ProviderFailed("fal result has an image without a url", retryable=False)
            url = image["url"]
            width, height = int(image.get("width") or 0), int(image.get("height") or 0)
            if url.startswith("data:"):
                data, content_type = decode_data_uri(url, self.name)
                outputs.append(Output(data=data, content_type=image.get("content_type") or content_type,
                                      width=width, height=height))
            else:
                outputs.append(Output(url=url, width=width, height=height,
                                      content_type=image.get("content_type") or content_type_for(url)))
        return outputs
