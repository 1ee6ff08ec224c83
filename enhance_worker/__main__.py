"""`python -m enhance_worker` / `imagemesh-enhance-worker`: one enhance worker until SIGTERM.

Order matters: health
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
from imagemesh.process import configure_logging, serve_metrics
from imagemesh.podcost import PodDeletionCost
from imagemesh.worker import HealthServer, WorkerRuntime, serve

from .engine import EnhanceEngine
from .settings import EnhanceSettings
from .weights import MissingWeights

log = logging.getLogger("imagemesh.enhance")


async def amain(s: EnhanceSettings) -> int:
    health = HealthServer(s.health_port)
    await health.start()  # NOT_SERVING until the models are loaded
    try:
        engine = await EnhanceEngine.create(s)
    except MissingWeights as exc:
        log.error("%s", exc)
        await health.stop()
        return 2
    log.info("enhance engine ready: %s on %s", engine.model_name, engine.device)
    runtime = WorkerRuntime(gateway=s.gateway, pool="enhance", capacity=s.capacity, executor=engine,
                            worker_id=s.worker_id or f"enhance-{socket.gethostname()}-{os.getpid()}",
                            api_key=s.api_key, device=engine.device, heartbeat=s.heartbeat_interval,
                            deletion_cost=PodDeletionCost.from_environment())
    engine.objects.channel = lambda: runtime.channel  # outputs go to storage beside the Connect stream
    await serve(runtime, health, s.drain_seconds)
    await engine.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    settings = load(EnhanceSettings, argv, prog="imagemesh-enhance-worker")
    configure_logging(settings.log_level)
    serve_metrics(settings.metrics_port)
    sys.exit(asyncio.run(amain(settings)))


if __name__ == "__main__":
    main()
