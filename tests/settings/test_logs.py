"""Log lines: no URL query string or token reaches them, JSON lines carry the context's ids."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import textwrap

from tests.conftest import ROOT, python_env

SIGNED = "X-Amz-Signature=5e3f0c0ffee0ddba11deadbeef0123456789abcdef&X-Amz-Credential=AKIAEXAMPLE"


def run_child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=python_env())


def test_httpx_does_not_log_request_urls_at_info():
    """httpx logs `HTTP Request: GET <full URL>` at INFO: a presigned URL's signature with it."""
    out = run_child(f"""
        import http.server, threading, httpx
        from imagemesh.process import configure_logging

        class Ok(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
                self.wfile.write(b"ok")
            def log_message(self, *args): pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        configure_logging("INFO")
        reply = httpx.get(f"http://127.0.0.1:{{server.server_address[1]}}/out.png?{SIGNED}")
        print(reply.status_code)
        server.shutdown()
    """)
    assert out.returncode == 0 and out.stdout.strip() == "200", out.stderr
    assert "5e3f0c0ffee" not in out.stderr and "AKIAEXAMPLE" not in out.stderr, out.stderr


def test_a_secret_logged_by_mistake_is_redacted_in_text_and_json():
    """Defence in depth: whatever a log call passes, the line that is written has no secret."""
    for fmt in ("text", "json"):
        out = run_child(f"""
            import logging
            from imagemesh.process import configure_logging
            configure_logging("INFO", "{fmt}")
            log = logging.getLogger("imagemesh.test")
            log.warning("fetch of %s failed", "https://bucket.s3.example.com/a.png?{SIGNED}")
            log.info("sent headers %s", {{"Authorization": "Bearer sk-live-0123456789abcdefghij"}})
            log.info("provider said: Incorrect API key provided: r8_AbCdEfGhIjKlMnOpQrStUvWxYz012345")
            try:
                raise RuntimeError("redis://:hunter2-password@redis.internal:6379/0 unreachable")
            except RuntimeError:
                log.exception("start failed")
        """)
        assert out.returncode == 0, out.stderr
        for secret in ("5e3f0c0ffee", "AKIAEXAMPLE", "sk-live-0123", "r8_AbCdEf", "hunter2"):
            assert secret not in out.stderr, (fmt, secret, out.stderr)
        for kept in ("fetch of https://bucket.s3.example.com/a.png?[redacted] failed", "start failed",
                     "redis.internal:6379"):
            assert kept in out.stderr, (fmt, kept, out.stderr)
        if fmt == "json":
            lines = [json.loads(line) for line in out.stderr.splitlines()]
            assert [line["level"] for line in lines] == ["WARNING", "INFO", "INFO", "ERROR"]
            assert "RuntimeError" in lines[-1]["exc"]


def test_ordinary_ids_survive_redaction():
    from imagemesh.redaction import redact

    text = ("attempt b0123456789abcdef-3#2 of key replicate:0123456789abcdef on gen-worker-7 "
            "(gateway gw-host-42-a1b2c3), 512x512 png")
    assert redact(text) == text


def _record_lines(fmt: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    from imagemesh.logs import RedactingFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(fmt)
    logger = logging.getLogger(f"imagemesh.test.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger, stream


async def test_context_ids_follow_each_task_and_do_not_mix():
    from imagemesh.logs import JsonFormatter, log_context

    logger, stream = _record_lines(JsonFormatter())

    async def attempt(task: str, n: int) -> None:
        with log_context(batch_id="b1", task_id=task, attempt=n):
            await asyncio.sleep(0.01)
            logger.info("running")
            await asyncio.sleep(0.01)
            logger.info("done")

    with log_context(worker_id="w1"):
        await asyncio.gather(*(attempt(f"b1-{i}", i + 1) for i in range(5)))
    logger.info("outside")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 11
    for line in lines[:-1]:
        assert line["batch_id"] == "b1" and line["worker_id"] == "w1"
        assert line["attempt"] == int(line["task_id"].rsplit("-", 1)[1]) + 1
    assert sorted(line["task_id"] for line in lines[:-1]) == sorted(f"b1-{i}" for i in range(5) for _ in (1, 2))
    assert set(lines[-1]) == {"ts", "level", "logger", "msg"}


def test_text_lines_end_with_the_ids():
    from imagemesh.logs import TextFormatter, log_context

    logger, stream = _record_lines(TextFormatter())
    with log_context(batch_id="b9", task_id="b9-0"):
        logger.info("hello")
    assert stream.getvalue().rstrip().endswith("hello [batch_id=b9 task_id=b9-0]")
