"""Replicate predictions API (https://replicate.com/docs/reference/http).

One call: create a prediction with `Prefer: wait=N` (the API holds the request up to N seconds,
N ≤ 60 and within our deadline), then poll `GET /v1/predictions/{id}` until the status is
terminal (`succeeded`, `failed`, `canceled`). On timeout, on asyncio cancellation (a lost race)
and on any error after creation, `POST /v1/predictions/{id}/cancel` is sent best-effort so the
job stops holding the key's concurrency slot at Replicate.

Model strings: `owner/name` runs the model's latest version through
`POST /v1/models/{owner}/{name}/predictions`; `owner/name:version` (or a bare version id) runs
that version through `POST /v1/predictions`.

Outputs are URLs (a string or a list) on replicate.delivery, valid for one hour: each Output has
`url_expires_at_ms` set; `inline_outputs` fetches them when the caller wants bytes.
Polls go to our configured base URL, never to the `urls.get` the API returns, so the token is
sent to that one origin only.
"""

from __future__ import annotations

import time
from typing import Any

from gen_worker.providers.base import GenerateRequest, Output
from gen_worker.providers.http import HTTPProvider, content_type_for, decode_data_uri
from imagemesh.errors import InvalidInput, ProviderFailed

DEFAULT_BASE_URL = "https://api.replicate.com"
# Replicate deletes outputs of API predictions after an hour; keep a margin for clock skew.
OUTPUT_TTL_MS = 3600_000 - 60_000
MAX_PREFER_WAIT = 60
TERMINAL = ("succeeded", "failed", "canceled")


class ReplicateProvider(HTTPProvider):
    name = "replicate"

    def __init__(self, base_url: str = DEFAULT_BASE_URL, *, prefer_wait: int = MAX_PREFER_WAIT,
                 **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        # Longest `Prefer: wait`. Longer saves polls; but a cancellation during the wait can only
        # stop the job once the answer (with its id) arrives, up to this many seconds later.
        self.prefer_wait = max(0, min(MAX_PREFER_WAIT, prefer_wait))

    def _create_call(self, model: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if not model:
            raise InvalidInput("replicate needs a model: 'owner/name' or 'owner/name:version'")
        name, sep, version = model.partition(":")
        if sep:
            if not version:
                raise InvalidInput(f"replicate model {model!r} has an empty version")
            return "/v1/predictions", {"version": version, "input": inputs}
        if "/" not in name:
            # A bare version id.
            return "/v1/predictions", {"version": name, "input": inputs}
        owner, _, model_name = name.partition("/")
        if not owner or not model_name or "/" in model_name:
            raise InvalidInput(f"replicate model {model!r} is not 'owner/name'")
        return f"/v1/models/{owner}/{model_name}/predictions", {"input": inputs}

    async def _generate(self, request: GenerateRequest, token: str,
                        deadline: float) -> list[Output]:
        inputs = dict(request.inputs)
        inputs["prompt"] = request.prompt
        inputs["num_outputs"] = request.num_outputs
        path, body = self._create_call(request.model, inputs)
        headers = {}
        wait = min(self.prefer_wait, int(deadline - time.monotonic()) - 1)
        if wait >= 1:
            headers["Prefer"] = f"wait={wait}"
        response = await self.submit(
            self.send("POST", self.base_url + path, token=token, deadline=deadline, json=body,
                      headers=headers, what="creating a prediction"),
            lambda answer: self._cancel_created(answer, token),
            budget=max(wait, 0) + self.cancel_timeout)
        prediction = self.json_of(response, self.name, "creating a prediction")
        job = prediction.get("id")
        if not isinstance(job, str) or not job:
            raise ProviderFailed("replicate answered without a prediction id", retryable=True)
        finished = False
        try:
            if prediction.get("status") not in TERMINAL:
                prediction = await self.poll_until(
                    lambda: self._get(job, token, deadline),
                    lambda p: p.get("status") in TERMINAL, deadline)
            finished = True
        finally:
            if not finished:
                await self.cancel_remote(lambda: self._cancel(job, token), job)
        return self._outputs(prediction)

    async def _get(self, job: str, token: str, deadline: float) -> dict[str, Any]:
        response = await self.send("GET", f"{self.base_url}/v1/predictions/{job}", token=token,
                                   deadline=deadline, what="polling a prediction")
        return self.json_of(response, self.name, "polling a prediction")

    async def _cancel_created(self, answer: Any, token: str) -> None:
        prediction = self.json_of(answer, self.name, "creating a prediction")
        job = prediction.get("id")
        if isinstance(job, str) and job and prediction.get("status") not in TERMINAL:
            await self._cancel(job, token)

    async def _cancel(self, job: str, token: str) -> None:
        await self.send("POST", f"{self.base_url}/v1/predictions/{job}/cancel", token=token,
                        deadline=time.monotonic() + self.cancel_timeout,
                        what="cancelling a prediction")

    def _outputs(self, prediction: dict[str, Any]) -> list[Output]:
        status = prediction.get("status")
        if status == "failed":
            error = str(prediction.get("error") or "no reason given")[:300]
            raise ProviderFailed(f"replicate prediction failed: {error}", retryable=False)
        if status == "canceled":
            raise ProviderFailed("replicate prediction was canceled", retryable=False)
        output = prediction.get("output")
        urls = [output] if isinstance(output, str) else output
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise ProviderFailed("replicate prediction succeeded without image URLs",
                                 retryable=False)
        expires = int(time.time() * 1000) + OUTPUT_TTL_MS
        outputs = []
        for url in urls:
            if url.startswith("data:"):
                data, content_type = decode_data_uri(url, self.name)
                outputs.append(Output(data=data, content_type=content_type))
            else:
                outputs.append(Output(url=url, content_type=content_type_for(url),
                                      url_expires_at_ms=expires))
        return outputs
