"""Object keys: where each stored file lives, the same for every backend.

    <tenant>/<batch>/<task index>/<attempt>/<filename>    an output of one attempt of one task
    <tenant>/~inputs/<upload id>/<filename>                an input uploaded before a submit

Every output key holds its attempt, so two attempts of one task (a hedged race, a retry after
a lost worker) never write the same object; the task's result names the winning attempt's
objects and the others are collected with the batch (see gateway.retention). `~` cannot
appear in a batch id, so uploads never share a prefix with a batch.

`<tenant>` is the tenant's name when it is a safe path segment, else `~` and a hash of it (a
name is never trusted to be a path). Filenames are sanitised (`imagemesh.filenames`) before
they get here; `check` refuses anything that could climb out of a prefix all the same.
"""

from __future__ import annotations

import hashlib
import re

from imagemesh import filenames

INPUTS = "~inputs"
MAX_KEY_CHARS = 1024

_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")


class BadKey(ValueError):
    """A key that is not one of ours (empty segment, `..`, backslash, control character)."""


def tenant_segment(tenant: str) -> str:
    if _SAFE_SEGMENT.match(tenant):
        return tenant
    return "~" + hashlib.sha256(tenant.encode()).hexdigest()[:20]


def batch_prefix(tenant: str, batch_id: str) -> str:
    """Every object of a batch is under this prefix (plus "/")."""
    return f"{tenant_segment(tenant)}/{batch_id}"


def attempt_prefix(tenant: str, batch_id: str, index: int, attempt: int) -> str:
    return f"{batch_prefix(tenant, batch_id)}/{index}/{attempt}"


def inputs_prefix(tenant: str, upload_id: str) -> str:
    return f"{tenant_segment(tenant)}/{INPUTS}/{upload_id}"


def tenant_inputs(tenant: str) -> str:
    return f"{tenant_segment(tenant)}/{INPUTS}/"


def object_key(prefix: str, filename: str) -> str:
    return check(f"{prefix}/{filenames.sanitize(filename)}")


def group_of(key: str) -> str:
    """The prefix a key is collected with: `<tenant>/<batch>` or `<tenant>/~inputs/<upload id>`."""
    parts = key.split("/")
    return "/".join(parts[:3] if len(parts) > 2 and parts[1] == INPUTS else parts[:2])


def tenant_of(key: str) -> str:
    """The tenant segment of a key (quotas are counted per segment)."""
    return key.split("/", 1)[0]


def check(key: str) -> str:
    """`key` if it is a well-formed object key; raises BadKey otherwise."""
    if not key or len(key) > MAX_KEY_CHARS:
        raise BadKey(f"object key: 1..{MAX_KEY_CHARS} characters")
    if "\\" in key or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise BadKey("object key: backslashes and control characters are not allowed")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise BadKey("object key: empty, '.' or '..' segment")
    return key


def filename_of(key: str) -> str:
    return key.rsplit("/", 1)[-1]
