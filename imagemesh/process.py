"""What every ImageMesh process does the same way: logging, /metrics, and SIGTERM handling."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from imagemesh import metrics


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve_metrics(port: int) -> int | None:
    """Start /metrics unless port is -1; returns the bound port (announced on stdout)."""
    if port < 0:
        return None
    bound = metrics.serve(port)
    announce("METRICS_PORT", bound)
    return bound


def announce(name: str, value: object) -> None:
    """One `NAME=value` line on stdout: how tests and `make run` learn ports chosen at start."""
    print(f"{name}={value}", flush=True)


async def stop_signal() -> str:
    """Wait for SIGTERM or SIGINT; returns the signal's name."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[str] = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda s=sig: got.done() or got.set_result(s.name))
    try:
        return await got
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
