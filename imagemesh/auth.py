"""Who is calling: API keys, configured hashed, each with a role.

Keys are configured as `role:sha256hex` or `name:role:sha256hex` (comma-separated in
`IMAGEMESH_API_KEYS`, or one per line in a file). Only hashes are stored: a key is random and
long, so a plain SHA-256 is enough (no password stretching needed), and the comparison is
constant-time. The tenant of a call is the key's name, or a prefix of its hash.

Roles: `admin` (everything, server tokens), `client` (submit and watch), `worker` (WorkerLink).
Callers send `authorization: Bearer <key>` metadata.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

ROLES = ("admin", "client", "worker")


@dataclass(frozen=True)
class Caller:
    tenant: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """The configured keys. `identify(metadata_value)` → Caller or None."""

    def __init__(self, entries: dict[str, Caller]) -> None:
        self._by_hash = entries

    @classmethod
    def parse(cls, text: str) -> "ApiKeys":
        """Parse `role:hash` / `name:role:hash` items separated by commas or newlines.

        Raises ValueError naming the bad item (without echoing anything that could be a key).
        """
        entries: dict[str, Caller] = {}
        items = [i.strip() for i in text.replace("\n", ",").split(",")]
        for n, item in enumerate(filter(None, items), 1):
            if item.startswith("#"):
                continue
            parts = item.split(":")
            if len(parts) == 2:
                role, digest = parts
                name = digest[:12]
            elif len(parts) == 3:
                name, role, digest = parts
            else:
                raise ValueError(f"API key entry {n}: expected role:sha256hex or name:role:sha256hex")
            digest = digest.lower()
            if role not in ROLES:
                raise ValueError(f"API key entry {n}: role must be one of {', '.join(ROLES)}")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"API key entry {n}: the hash must be 64 hex digits (sha256 of the key)")
            entries[digest] = Caller(tenant=name, role=role)
        return cls(entries)

    def __len__(self) -> int:
        return len(self._by_hash)

    def identify(self, authorization: str | None) -> Caller | None:
        if not authorization:
            return None
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key:
            return None
        digest = hash_key(key.strip())
        for known, caller in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return caller
        return None
