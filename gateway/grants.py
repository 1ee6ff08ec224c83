"""Storage grants: what one assignment may write and read in the embedded store.

A grant is a token the gateway signs into an `Assignment` (`storage_token`) and checks again
when the worker calls `WorkerObjects` (`PutObject`, `GetObject`) on top of the worker's key:

    v1.<base64url(json: w=write prefix, r=[objects it may read], m=max bytes, e=expiry ms)>.<hmac>

It names only that attempt's prefix (`tenant/batch/task/attempt`), so one attempt can never
write another's objects, another task's, or another tenant's; reads are the exact objects the
attempt was given. HMAC-SHA256 with a key derived from the gateway's secret key: every gateway
sharing `IMAGEMESH_SECRET_KEY` accepts the others' grants (without one, a random key: this
gateway only, which is where the worker's connection goes anyway).

`verify` returns None for anything forged, malformed or expired; it never says which.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Grant:
    write_prefix: str
    reads: tuple[str, ...]
    max_bytes: int
    expires_ms: int

    def may_write(self, key: str) -> bool:
        return bool(self.write_prefix) and key.startswith(self.write_prefix + "/")

    def may_read(self, key: str) -> bool:
        return key in self.reads


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Grants:
    def __init__(self, secret_key: str = "") -> None:
        seed = secret_key.encode() if secret_key else secrets.token_bytes(32)
        self._key = hashlib.sha256(b"imagemesh storage grant\0" + seed).digest()

    def issue(self, *, write_prefix: str, reads: list[str], max_bytes: int, ttl: float) -> str:
        body = {"w": write_prefix, "r": reads, "m": max_bytes, "e": int((time.time() + ttl) * 1000)}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"v1.{payload}.{self._sign(payload)}"

    def verify(self, token: str) -> Grant | None:
        version, _, rest = token.partition(".")
        payload, _, signature = rest.partition(".")
        if version != "v1" or not payload or not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            body = json.loads(_unb64(payload))
            grant = Grant(write_prefix=str(body["w"]), reads=tuple(str(r) for r in body["r"]),
                          max_bytes=int(body["m"]), expires_ms=int(body["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        return grant if grant.expires_ms > time.time() * 1000 else None

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())
