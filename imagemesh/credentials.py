"""Provider tokens: which one a task uses, how it is named, how it is kept.

Three tiers for each provider a task may use:

1. the caller is an admin → the server's own token for that provider;
2. the request carries a token for that provider → that token, for this batch only (a token
   given explicitly wins over tier 1: the caller asked for it);
3. the server allows ordinary clients its tokens (`allow_server_tokens`) → the server's token.

Otherwise the provider is not usable by that caller (the task fails with AUTH, naming the
provider). A token is never written anywhere in clear: its *key id* is `provider:fingerprint`
(an HMAC of the token under the server secret, so fingerprints can't be brute-forced from a
leaked Redis dump), and a caller's token is stored sealed (Fernet) in the batch's credential
hash, which expires with the batch.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken

NO_TOKEN = "-"


class Sealer:
    """Encrypts caller tokens with the server secret (a Fernet key).

    Every gateway replica must share the same secret, or a batch accepted by one cannot be
    dispatched by another. A missing secret makes a random one: fine for one process, wrong for
    a mesh — the gateway logs a warning.
    """

    def __init__(self, secret: str | None) -> None:
        self.ephemeral = not secret
        key = secret.encode() if secret else Fernet.generate_key()
        try:
            self._fernet = Fernet(key)
        except ValueError:
            raise ValueError("IMAGEMESH_SECRET_KEY must be a Fernet key (32 url-safe base64-encoded bytes); make one "
                             "with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
                             ) from None
        self._mac_key = hashlib.sha256(b"imagemesh-fingerprint\0" + key).digest()

    def seal(self, token: str) -> bytes:
        return self._fernet.encrypt(token.encode())

    def unseal(self, sealed: bytes) -> str:
        """Raises ValueError (without any of the token) when the secret does not match."""
        try:
            return self._fernet.decrypt(sealed).decode()
        except InvalidToken:
            raise ValueError("a sealed token could not be opened: IMAGEMESH_SECRET_KEY differs between gateways") from None

    def fingerprint(self, token: str | None) -> str:
        if not token:
            return NO_TOKEN
        return hmac.new(self._mac_key, token.encode(), hashlib.sha256).hexdigest()[:16]

    def key_id(self, provider: str, token: str | None) -> str:
        return f"{provider}:{self.fingerprint(token)}"


def resolve_token(provider: str, *, is_admin: bool, request_tokens: dict[str, str],
                  server_tokens: dict[str, str], allow_server_tokens: bool) -> str | None:
    """The token tier 1/2/3 picks for `provider`, or None when the caller has none for it."""
    if provider in request_tokens:
        return request_tokens[provider]
    if (is_admin or allow_server_tokens) and provider in server_tokens:
        return server_tokens[provider]
    return None
