"""Log lines of every ImageMesh process: text or JSON, ids from the context, secrets redacted.

    with log_context(batch_id=b, task_id=t, attempt=2):
        log.info("attempt started")     # carries batch_id, task_id, attempt (and worker_id, tenant
                                        # if an outer context set them)

The ids live in a `contextvars.ContextVar`, so they follow asyncio tasks: a task created inside a
`log_context` block keeps the ids, and concurrent attempts never see each other's. In JSON each
id is a field of the line's object; in text they are appended as `[batch_id=... task_id=...]`.

What can go wrong and is handled here:
- httpx and httpcore log every request with its full URL at INFO, and a presigned URL's query
  string is a credential: both loggers are held at WARNING.
- Any message (and traceback) is passed through `imagemesh.redaction.redact` before it is
  written, in case some code logs a URL, a header or a token anyway.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import IO, Any

from imagemesh.redaction import redact

FIELDS = ("batch_id", "task_id", "attempt", "tenant", "worker_id")
# Loggers that write URLs (with query strings) at INFO or DEBUG.
QUIET = ("httpx", "httpcore", "hpack", "urllib3")

_context: ContextVar[Mapping[str, Any]] = ContextVar("imagemesh_log_context", default={})


@contextlib.contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Add `ids` (batch_id, task_id, attempt, tenant, worker_id, ...) to every log line written
    inside the block, and inside tasks created in it. Empty values are left out."""
    token = _context.set({**_context.get(), **{k: v for k, v in ids.items() if v not in (None, "")}})
    try:
        yield
    finally:
        # An async generator closed from another context (garbage collection) can't reset; its
        # context is discarded anyway.
        with contextlib.suppress(ValueError):
            _context.reset(token)


def bind(**ids: Any) -> None:
    """Add `ids` for the rest of the current context (e.g. worker_id for a whole process)."""
    _context.set({**_context.get(), **{k: v for k, v in ids.items() if v not in (None, "")}})


def current() -> dict[str, Any]:
    return dict(_context.get())


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and traceback) through `redact`, and attaches the context
    ids. Installed on the handler, so it sees records of every logger."""

    def __init__(self) -> None:
        super().__init__()
        self._exceptions = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exceptions.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        if not hasattr(record, "ids"):
            record.ids = current()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = getattr(record, "ids", None)
        if ids:
            head, sep, tail = line.partition("\n")
            line = head + " [" + " ".join(f"{k}={v}" for k, v in ids.items()) + "]" + sep + tail
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (RFC 3339, UTC), level, logger, msg, the context ids, and
    `exc` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        out.update(getattr(record, "ids", None) or {})
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self.formatException(record.exc_info))
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


def configure(level: str = "INFO", fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """Route every logger to `stream` (stderr) as text or JSON lines, redacted; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    return handler
