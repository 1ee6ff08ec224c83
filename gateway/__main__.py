"""`python -m gateway` / `imagemesh-gateway`: run one gateway replica until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys

from imagemesh.config import load
from imagemesh.process import announce, configure_logging, exit_on_fatal_error, serve_metrics, stop_signal

from .server import Gateway
from .settings import GatewaySettings

log = logging.getLogger("imagemesh.gateway")


async def amain(settings: GatewaySettings) -> int:
    gateway = Gateway(settings)
    if len(gateway.keys) == 0:
        log.error("no API keys configured (IMAGEMESH_API_KEYS or IMAGEMESH_API_KEYS_FILE): every call would be refused")
        return 2
    port = await gateway.start()
    host = settings.listen.rsplit(":", 1)[0]
    announce("GATEWAY", f"{host}:{port}")
    log.info("gateway %s listening on %s:%d", gateway.id, host, port)
    name = await stop_signal()
    log.info("%s received", name)
    await gateway.drain()
    return 0


def main(argv: list[str] | None = None) -> None:
    settings = load(GatewaySettings, argv, prog="imagemesh-gateway")
    configure_logging(settings.log_level)
    with exit_on_fatal_error("imagemesh-gateway"):
        serve_metrics(settings.metrics_port, settings.metrics_host)
        code = asyncio.run(amain(settings))
    sys.exit(code)


if __name__ == "__main__":
    main()
