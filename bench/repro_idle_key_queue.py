"""Reproduction (gateway performance, not a benchmark scenario): once a second key's queue
existed, even empty, the same local load ran at about half the rate (fixed in 95a28c3: credits
are shared only among queues with work; this script now shows the two rates about equal).

    python -m bench.repro_idle_key_queue

One gateway + 2 workers (capacity 32), local provider, 20 000 tasks (20 batches of 1 000) twice;
then 10 tasks on a Replicate key (the fake, latency 0), which leave an empty second queue;
then the same local load twice more. Measured before the fix (quiet machine): ~2 500 tasks/s and 0.30
gateway CPU-ms per task before, ~1 050 tasks/s and 0.82 after (workers 0.21 → 0.46 CPU-ms).
The cause was: gateway/dispatch.py `_pool_loop` divided the read batch by the number of ready
queues (`per_queue = min(read_batch, credits) // len(ready)`), empty ones included, so a busy
queue was read in smaller bites (more Redis round trips and smaller worker frames per task).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from bench import rig as R
from bench.throughput import _mesh_run
from bench.traffic import local_tasks, replicate_tasks, run_batches
from tests.conftest import RedisServer


async def main(rig: R.Rig) -> None:
    with R.FakeProvider(latency=0.0) as fake:
        async with R.started_mesh(rig, "repro", workers=2, IMAGEMESH_KEY_LIMITS="local=0,replicate=0",
                                  worker_settings={"IMAGEMESH_CAPACITY": "32",
                                                   "IMAGEMESH_REPLICATE_BASE_URL": fake.url,
                                                   "IMAGEMESH_ALLOW_PRIVATE_URLS": "1"}) as m:
            for i, phase in enumerate(("one key", "one key", None, "after 2nd key", "after 2nd key")):
                if phase is None:
                    await run_batches(m.address, R.CLIENT_KEY, [replicate_tasks(10)], credentials={"replicate": "tok"})
                    continue
                r = await _mesh_run(m, 20000, lambda k: local_tasks(k, prefix=f"p{i}-"))
                print(f"{phase:14s} {r['tasks_per_s']:6.0f} tasks/s  gateway {r['gateway_cpu_s_per_1000']:.2f}  "
                      f"workers {r['workers_cpu_s_per_1000']:.2f} CPU-s/1000", flush=True)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        redis = RedisServer(Path(d))
        redis.start()
        try:
            asyncio.run(main(R.Rig(redis=redis, scratch=Path(d))))
        finally:
            redis.stop()
