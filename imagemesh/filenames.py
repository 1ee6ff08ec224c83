"""Output filenames: the caller's names kept, made safe, never colliding within a task.

Rules: the name is reduced to its last path component (no directories, no `..`), control
characters and characters that are unsafe on common filesystems are replaced by `_`, the length
is bounded (extension kept), an empty or dot-only name becomes `output`. A missing or wrong
extension is fixed from the content type; several outputs become `name_1.ext`, `name_2.ext`.
Isolation between tasks comes from storage paths keyed by task id, not from the name.
"""

from __future__ import annotations

import re
import unicodedata

MAX_LENGTH = 120

_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')

EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
}
_KNOWN_EXT = {".png", ".jpg", ".jpeg", ".webp", ".gif"}


def sanitize(name: str, default: str = "output") -> str:
    """A safe single-component filename made from `name` (which may be anything)."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join("_" if unicodedata.category(c).startswith("C") else c for c in name)
    name = _UNSAFE.sub("_", name).strip().strip(".").strip()
    if not name:
        name = default
    if len(name) > MAX_LENGTH:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 8:
            name = stem[: MAX_LENGTH - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_LENGTH]
    return name


def split_ext(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    if dot and stem and ("." + ext.lower()) in _KNOWN_EXT:
        return stem, "." + ext.lower()
    return name, ""


def with_content_type(name: str, content_type: str) -> str:
    """`name` with the extension that matches `content_type` (kept if it already matches)."""
    wanted = EXTENSIONS.get(content_type.split(";")[0].strip().lower())
    stem, ext = split_ext(name)
    if wanted is None:
        return name
    if ext in (wanted, ".jpeg" if wanted == ".jpg" else None):
        return name
    return stem + wanted


def numbered(name: str, index: int, count: int) -> str:
    """The filename of output `index` (0-based) out of `count`: `name` alone, or `name_{i+1}.ext`."""
    if count <= 1:
        return name
    stem, ext = split_ext(name)
    return f"{stem}_{index + 1}{ext}"


def enhanced(input_names: list[str], output_filename: str, content_type: str) -> list[str]:
    """Filenames of an enhance attempt's outputs: one per input of a then_enhance stage (each
    input's own name), or the task's `output_filename`; with the output format's extension, and
    a second input of the same name numbered so both are kept."""
    names = [sanitize(n or output_filename or f"enhanced_{i + 1}") for i, n in enumerate(input_names)] \
        if input_names else [sanitize(output_filename or "enhanced")]
    out: list[str] = []
    for i, name in enumerate(names):
        name = with_content_type(name, content_type)
        if name in out:
            stem, dot, ext = name.rpartition(".")
            name = f"{stem}_{i + 1}.{ext}" if dot else f"{name}_{i + 1}"
        out.append(name)
    return out
