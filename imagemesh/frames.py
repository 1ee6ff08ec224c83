"""Frames on the worker stream are capped by bytes.

Results are small once outputs are stored (references and metadata), but inline outputs
(`inline_outputs`, or storage off) make some of them large. A frame with every ready result in
it could then pass the gateway's message limit, and a message over the limit ends the whole
stream: every attempt on it would be lost and re-run, other tenants' included. So the writer
sends what is ready in frames of at most `max_bytes`, in order; a single result larger than
that still goes alone (its outputs were each capped by the inline limit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

DEFAULT_FRAME_BYTES = 4 * 1024 * 1024


def take_frame(ready: Sequence[M], max_bytes: int = DEFAULT_FRAME_BYTES) -> tuple[list[M], list[M]]:
    """(what goes in this frame, what waits for the next), at least one item per frame."""
    size = 0
    for n, item in enumerate(ready):
        size += item.ByteSize() + 8  # field tag and length prefix, generously
        if size > max_bytes and n > 0:
            return list(ready[:n]), list(ready[n:])
    return list(ready), []
