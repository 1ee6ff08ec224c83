"""`python -m enhance_worker` / `imagemesh-enhance-worker`: one enhance worker until SIGTERM.

(Draft by the engine's author; the worker runtime's owner may reshape it.) Order matters: health
is NOT_SERVING while the models load (seconds), SERVING only once `EnhanceEngine.create` has
returned; the worker dials the gateway only then, so it is never given work it cannot start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys

from imagemesh.config import load
from imagemesh.process import announce, configure_logging, serve_metrics, stop_signal
from imagemesh.podcost import PodDeletionCost
from imagemesh.worker import HealthServer, WorkerRuntime

from .engine import EnhanceEngine
from .settings import EnhanceSettings
from .weights import MissingWeights

log = logging.getLogger("imagemesh.enhance")


async def amain(s: EnhanceSettings) -> int:
    health = HealthServer(s.health_port) if s.health_port >= 0 else None
    if health:
        await health.start()  # NOT_SERVING until the models are loaded
        announce("HEALTH_PORT", health.port)
    try:
        engine = await EnhanceEngine.create(s)
    except MissingWeights as exc:
        log.error("%s", exc)
        if health:
            await health.stop()
        return 2
    log.info("enhance engine ready: %s on %s", engine.model_name, engine.device)
    runtime = WorkerRuntime(gateway=s.gateway, pool="enhance", capacity=s.capacity, executor=engine,
                            worker_id=s.worker_id or f"enhance-{socket.gethostname()}-{os.getpid()}",
                            api_key=s.api_key, device=engine.device, heartbeat=s.heartbeat_interval,
                            deletion_cost=PodDeletionCost.from_environment())
    if health:
        await health.set(True)
    stop = asyncio.Event()
    run = asyncio.create_task(runtime.run(stop, s.drain_seconds))
    await stop_signal()
    if health:
        await health.set(False)
    stop.set()
    await run
    await engine.close()
    if health:
        await health.stop()
    return 0


def main(argv: list[str] | None = None) -> None:
    settings = load(EnhanceSettings, argv, prog="imagemesh-enhance-worker")
    configure_logging(settings.log_level)
    serve_metrics(settings.metrics_port)
    sys.exit(asyncio.run(amain(settings)))


if __name__ == "__main__":
    main()
