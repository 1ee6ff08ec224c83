"""`python -m enhance_worker` / `imagemesh-enhance-worker`: one enhance worker until SIGTERM.

Order matters: health
is NOT_SERVING while the models load (seconds), SERVING only once `EnhanceEngine.create` has
returned; the worker dials the gateway only then, so it is never given work it cannot start.
"""

from __future__ import annotations

import logging
import os
import socket

from imagemesh.config import SettingError, load
from imagemesh.podcost import PodDeletionCost
from imagemesh.process import run, start_health
from imagemesh.worker import WorkerRuntime, dial_tls, serve

from .engine import EnhanceEngine
from .settings import EnhanceSettings
from .weights import MissingWeights

PROG = "imagemesh-enhance-worker"
log = logging.getLogger("imagemesh.enhance")


async def amain(s: EnhanceSettings) -> int:
    tls = dial_tls(s)  # FatalError now, not after the models have loaded
    health = await start_health(s.health_port, s.health_host)  # NOT_SERVING until the models are loaded
    try:
        engine = await EnhanceEngine.create(s)
    except MissingWeights as exc:
        await health.stop()
        raise SettingError("weights_dir", str(exc)) from None
    log.info("enhance engine ready: %s on %s", engine.model_name, engine.device)
    runtime = WorkerRuntime(gateway=s.gateway, pool="enhance", capacity=s.capacity, executor=engine,
                            worker_id=s.worker_id or f"enhance-{socket.gethostname()}-{os.getpid()}",
                            api_key=s.api_key, device=engine.device, heartbeat=s.heartbeat_interval,
                            max_message_bytes=s.max_message_bytes,
                            deletion_cost=PodDeletionCost.from_environment(), tls=tls)
    engine.objects.channel = lambda: runtime.channel  # outputs go to storage beside the Connect stream
    await serve(runtime, health, s.drain_seconds)
    await engine.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    run(PROG, "enhance-worker", load(EnhanceSettings, argv, prog=PROG), amain)


if __name__ == "__main__":
    main()
