"""What a well-formed request is, and the message that says what is wrong with one.

Every message names the field (with its index) and the limit, e.g.
`tasks[3].generate.prompt: 5001 characters, the limit is 4000`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imagemesh.errors import InvalidInput
from imagemesh.v1 import imagemesh_pb2 as pb

# fullmatch, never `$`: `$` also matches before a trailing newline ("b1\n" would pass).
BATCH_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
FORMATS = ("png", "jpg", "jpeg", "webp")


class BadRequest(Exception):
    """The request as a whole is wrong: answered INVALID_ARGUMENT, nothing is accepted."""


@dataclass(frozen=True)
class Limits:
    max_batch_tasks: int = 1000
    max_prompt_chars: int = 4000
    max_outputs: int = 8
    max_labels: int = 16
    max_label_chars: int = 256
    max_filename_chars: int = 255
    max_image_bytes: int = 20 * 1024 * 1024
    max_url_chars: int = 2048
    max_input_fields: int = 64
    max_queued_per_tenant: int = 100_000
    max_queued_bytes_per_tenant: int = 512 * 1024 * 1024


def check_batch(tasks_count: int, batch_id: str, limits: Limits) -> None:
    if tasks_count == 0:
        raise BadRequest("tasks: the batch is empty (at least 1 task)")
    if tasks_count > limits.max_batch_tasks:
        raise BadRequest(f"tasks: {tasks_count} tasks, the limit is {limits.max_batch_tasks} per batch")
    if batch_id and not BATCH_ID.fullmatch(batch_id):
        raise BadRequest("batch_id: 1-64 characters of A-Z a-z 0-9 _ . -")


def check_credentials(credentials: dict[str, str], known: tuple[str, ...]) -> None:
    for provider, token in credentials.items():
        if provider not in known:
            raise BadRequest(f"credentials: unknown provider {provider!r} (this mesh has: {', '.join(known)})")
        if not token or len(token) > 4096:
            raise BadRequest(f"credentials[{provider!r}]: the token must be 1-4096 characters")


def check_task(task: pb.Task, where: str, limits: Limits) -> None:
    """Raises InvalidInput naming the field and the limit."""
    if len(task.output_filename) > limits.max_filename_chars:
        raise InvalidInput(f"{where}.output_filename: {len(task.output_filename)} characters, "
                           f"the limit is {limits.max_filename_chars}")
    if len(task.labels) > limits.max_labels:
        raise InvalidInput(f"{where}.labels: {len(task.labels)} labels, the limit is {limits.max_labels}")
    for k, v in task.labels.items():
        if len(k) > limits.max_label_chars or len(v) > limits.max_label_chars:
            raise InvalidInput(f"{where}.labels: a key or value is longer than {limits.max_label_chars} characters")
    kind = task.WhichOneof("kind")
    if kind is None:
        raise InvalidInput(f"{where}: set one of generate or enhance")
    if kind == "generate":
        _check_generate(task.generate, f"{where}.generate", limits)
        if task.HasField("then_enhance"):
            _check_enhance(task.then_enhance, f"{where}.then_enhance", limits, needs_source=False)
    else:
        _check_enhance(task.enhance, f"{where}.enhance", limits, needs_source=True)


def _check_generate(g: pb.GenerateSpec, where: str, limits: Limits) -> None:
    if not g.prompt.strip():
        raise InvalidInput(f"{where}.prompt: empty")
    if len(g.prompt) > limits.max_prompt_chars:
        raise InvalidInput(f"{where}.prompt: {len(g.prompt)} characters, the limit is {limits.max_prompt_chars}")
    if not 0 <= g.num_outputs <= limits.max_outputs:
        raise InvalidInput(f"{where}.num_outputs: {g.num_outputs}, must be 1..{limits.max_outputs}")
    if len(g.input.fields) > limits.max_input_fields:
        raise InvalidInput(f"{where}.input: {len(g.input.fields)} fields, the limit is {limits.max_input_fields}")
    if len(g.providers) > 8:
        raise InvalidInput(f"{where}.providers: {len(g.providers)} providers, the limit is 8")


def _check_enhance(e: pb.EnhanceSpec, where: str, limits: Limits, *, needs_source: bool) -> None:
    source = e.WhichOneof("source")
    if needs_source and source is None:
        raise InvalidInput(f"{where}: set image, image_url or image_object")
    if source == "image_object" and not 0 < len(e.image_object) <= 1024:
        raise InvalidInput(f"{where}.image_object: 1-1024 characters (the object UploadInput returned)")
    if source == "image" and len(e.image) > limits.max_image_bytes:
        raise InvalidInput(f"{where}.image: {len(e.image)} bytes, the limit is {limits.max_image_bytes}")
    if source == "image_url":
        if len(e.image_url) > limits.max_url_chars:
            raise InvalidInput(f"{where}.image_url: longer than {limits.max_url_chars} characters")
        if not e.image_url.lower().startswith(("http://", "https://")):
            raise InvalidInput(f"{where}.image_url: only http and https URLs are fetched")
    if e.upscale not in (0, 1, 2, 4):
        raise InvalidInput(f"{where}.upscale: {e.upscale}, must be 1, 2 or 4")
    if not 0.0 <= e.fidelity <= 1.0:
        raise InvalidInput(f"{where}.fidelity: {e.fidelity}, must be 0..1")
    if e.output_format and e.output_format.lower() not in FORMATS:
        raise InvalidInput(f"{where}.output_format: {e.output_format!r}, must be png, jpg or webp")
