"""A new API key and the entry that lets a gateway accept it (`imagemesh keys new`).

The gateway stores keys hashed (`imagemesh.auth`): an `IMAGEMESH_API_KEYS` entry is
`name:role:sha256hex`, the SHA-256 of the key's exact characters. `echo KEY | sha256sum` hashes
a trailing newline too and makes an entry that never matches; this module hashes with
`imagemesh.auth.hash_key`, the function the gateway uses, so the entry is right by construction.

A key is 32 random bytes (`secrets`), URL-safe base64 with an `imk_` prefix (secret scanners and
people recognise it); it is shown once, never stored. The name becomes the caller's tenant:
batches belong to it, and two keys with the same name share them (what a key rotation needs).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from imagemesh.auth import ROLES, hash_key

PREFIX = "imk_"
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")  # no ':' ',' '#' or spaces: the entry's separators


@dataclass(frozen=True)
class NewKey:
    name: str
    role: str
    key: str

    @property
    def entry(self) -> str:
        """The `IMAGEMESH_API_KEYS` item for this key."""
        return f"{self.name}:{self.role}:{hash_key(self.key)}"


def new_key(role: str, name: str = "") -> NewKey:
    """A fresh key. Raises ValueError for an unknown role or a name the entry cannot carry.
    Without a name, the tenant is named after the hash, as for a `role:hash` entry."""
    if role not in ROLES:
        raise ValueError(f"role: {role!r} is not one of {', '.join(ROLES)}")
    if name and not NAME.match(name):
        raise ValueError(f"name: {name!r}: use 1-64 characters of A-Z a-z 0-9 _ . -")
    key = PREFIX + secrets.token_urlsafe(32)
    return NewKey(name=name or hash_key(key)[:12], role=role, key=key)
