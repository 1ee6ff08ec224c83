"""The `local` provider: an offline renderer, so the mesh runs with no hosted API at all.

It draws a real image from the prompt and seed (deterministic: the same prompt, seed and size
give the same bytes), after a configurable latency that stands in for a provider's queue and
inference time (for demos and benchmarks). Its results say `provider: local` and
`model: local-renderer`: nobody can mistake them for a model's output.

Inputs it reads: `width`, `height` (16..2048, default 256), `seed` (default 0), `format`
(png|jpg), `latency_ms` (overrides the configured latency for this task).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import time

from PIL import Image, ImageDraw, ImageFont

from imagemesh.errors import InvalidInput, Timeout

from .base import GenerateRequest, Output

MODEL = "local-renderer"


@functools.cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow decodes its embedded default font on every load: load it once.
    return ImageFont.load_default()


def render(prompt: str, seed: int, width: int, height: int, fmt: str = "png") -> bytes:
    digest = hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()
    top, bottom = digest[0:3], digest[3:6]
    # A vertical gradient: one column computed, then stretched (cheap at any width).
    column = bytes(int(a + (b - a) * y / max(1, height - 1)) for y in range(height) for a, b in zip(top, bottom))
    img = Image.frombytes("RGB", (1, height), column).resize((width, height), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    for i in range(4):
        x0, y0 = digest[8 + i] * width // 256, digest[12 + i] * height // 256
        r = max(4, digest[16 + i] * min(width, height) // 1024)
        draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], outline=tuple(digest[20 + i:23 + i]), width=2)
    if width >= 64 and height >= 24:  # the prompt only where it can be read
        draw.text((6, 6), prompt[:60], fill=(255, 255, 255), font=_font())
    buf = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        img.save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _int_input(inputs: dict, name: str, default: int, lo: int, hi: int) -> int:
    value = inputs.get(name, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"generate.input.{name}: {value!r} is not a whole number") from None
    if not lo <= number <= hi:
        raise InvalidInput(f"generate.input.{name}: {number}, must be {lo}..{hi}")
    return number


class LocalProvider:
    name = "local"

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency

    async def generate(self, request: GenerateRequest, token: str | None, deadline: float) -> list[Output]:
        inputs = request.inputs
        width = _int_input(inputs, "width", 256, 16, 2048)
        height = _int_input(inputs, "height", 256, 16, 2048)
        seed = _int_input(inputs, "seed", 0, 0, 2**63 - 1)
        latency = _int_input(inputs, "latency_ms", int(self.latency * 1000), 0, 3_600_000) / 1000
        fmt = str(inputs.get("format", "png")).lower()
        if fmt not in ("png", "jpg", "jpeg"):
            raise InvalidInput(f"generate.input.format: {fmt!r}, must be png or jpg")
        if latency:
            if time.monotonic() + latency > deadline:
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                raise Timeout("the local renderer's latency is longer than the attempt's budget")
            await asyncio.sleep(latency)
        content_type = "image/jpeg" if fmt in ("jpg", "jpeg") else "image/png"
        outputs = []
        for i in range(max(1, request.num_outputs)):
            data = render(request.prompt, seed + i, width, height, fmt)
            outputs.append(Output(data=data, content_type=content_type, width=width, height=height))
        return outputs

    async def aclose(self) -> None:
        pass
