"""OpenAI-style images API: `POST /v1/images/generations` (OpenAI and compatible servers).

Request: `{model, prompt, n, size?, response_format?, ...inputs}`. `size` comes from the inputs,
or from `width` and `height` when both are given ("1024x1024"); other inputs pass through
(`quality`, `style`, `response_format`, `output_format`...). Answer: `data[].url` (valid one
hour: `url_expires_at_ms` is set) or `data[].b64_json` (decoded to bytes; width and height read
from the image header).

The API is synchronous: there is no job to cancel. On timeout or cancellation the HTTP request
is abandoned (the connection closed), which is all a client can do.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

from gen_worker.providers.base import GenerateRequest, Output
from gen_worker.providers.http import HTTPProvider, content_type_for, image_size
from imagemesh.errors import ProviderFailed

DEFAULT_BASE_URL = "https://api.openai.com"
OUTPUT_TTL_MS = 3600_000 - 60_000


class OpenAIProvider(HTTPProvider):
    name = "openai"

    def __init__(self, base_url: str = DEFAULT_BASE_URL, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)

    def _body(self, request: GenerateRequest) -> dict[str, Any]:
        inputs = dict(request.inputs)
        width, height = inputs.pop("width", None), inputs.pop("height", None)
        body: dict[str, Any] = {"prompt": request.prompt, "n": request.num_outputs}
        if request.model:
            body["model"] = request.model
        if "size" not in inputs and width and height:
            body["size"] = f"{int(width)}x{int(height)}"
        body.update(inputs)
        return body

    async def _generate(self, request: GenerateRequest, token: str,
                        deadline: float) -> list[Output]:
        body = self._body(request)
        response = await self.send("POST", f"{self.base_url}/v1/images/generations",
                                   token=token, deadline=deadline, json=body,
                                   what="generating images")
        answer = self.json_of(response, self.name, "generating images")
        data = answer.get("data")
        if not isinstance(data, list) or not data:
            raise ProviderFailed("openai answered without images", retryable=False)
        fmt = str(body.get("output_format") or "png").lower()
        b64_type = {"jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}.get(fmt, "image/png")
        expires = int(time.time() * 1000) + OUTPUT_TTL_MS
        outputs = []
        for item in data:
            if not isinstance(item, dict):
                raise ProviderFailed("openai answered an image entry that is not an object",
                                     retryable=False)
            if isinstance(item.get("b64_json"), str):
                try:
                    image = base64.b64decode(item["b64_json"], validate=True)
                except (binascii.Error, ValueError):
                    raise ProviderFailed("openai sent invalid base64 image data",
                                         retryable=False) from None
                width, height = image_size(image)
                outputs.append(Output(data=image, content_type=b64_type, width=width, height=height))
            elif isinstance(item.get("url"), str):
                outputs.append(Output(url=item["url"], content_type=content_type_for(item["url"]),
                                      url_expires_at_ms=expires))
            else:
                raise ProviderFailed("openai image entry has neither url nor b64_json",
                                     retryable=False)
        return outputs
