"""Text that may carry a secret, made safe to print: query strings, passwords in URLs, bearer
tokens, `token=`-style parameters and anything long that looks like a key.

This is defence in depth for log lines: code should never log a secret in the first place
(error messages name hosts, not URLs; tokens are referred to by fingerprint). Redaction can
hide an id that merely looks like a token (32+ characters of letters and digits together);
that is the price of catching the token nobody expected to log.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "[redacted]"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # user:password@ in any URL (redis://:pw@host, https://user:pw@host)
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^\s/@]*:[^\s/@]*@", re.I), r"\1" + REDACTED + "@"),
    # a URL's query string: presigned URLs carry their signature there
    (re.compile(r"(\bhttps?://[^\s?#\"'<>]+)\?[^\s#\"'<>]*", re.I), r"\1?" + REDACTED),
    # Authorization header values (any scheme), and bearer/basic credentials wherever they appear
    (re.compile(r"\b(authorization[\"']?\s*[:=]\s*[\"']?)(?:\w+\s+)?[^\s\"',;]+", re.I), r"\1" + REDACTED),
    (re.compile(r"\b(bearer|basic)(\s+)(?!\[redacted\])[A-Za-z0-9._~+/=:-]{6,}", re.I), r"\1\2" + REDACTED),
    # name=value parameters whose name says secret
    (re.compile(r"\b([\w-]*(?:token|secret|password|passwd|api[_-]?key|signature|credential|sig)"
                r"[\w-]*)(\s*[=:]\s*)(?!\[redacted\])[^\s&,;\"']+", re.I), r"\1\2" + REDACTED),
    # provider token shapes (Replicate r8_, OpenAI sk-)
    (re.compile(r"\b(?:r8_|sk-)[A-Za-z0-9_-]{16,}"), REDACTED),
    # anything long mixing letters and digits: keys, tokens, signatures
    (re.compile(r"(?<![\w/+=-])(?=[\w+/=-]*\d)(?=[\w+/=-]*[A-Za-z])[\w+/-]{32,}={0,2}(?![\w+/=-])"), REDACTED),
)


def redact(text: str) -> str:
    """`text` with everything that looks secret replaced by `[redacted]`."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def safe_url(url: str) -> str:
    """A URL fit for an error message: the password and the query string removed."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(a malformed URL)"
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
