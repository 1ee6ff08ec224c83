"""The Celery side of the throughput comparison: the same trivial work as the mesh's `local`
renderer (a 16×16 PNG from a prompt and seed), Redis as broker and result backend.

Broker/backend URL from BENCH_CELERY_REDIS (the bench's own Redis, another database number).
Workers: `python -m celery -A bench.celery_app worker --pool solo ...` (see bench.celery_baseline).
"""

from __future__ import annotations

import base64
import os

from celery import Celery

from gen_worker.providers.local import render

URL = os.environ.get("BENCH_CELERY_REDIS", "redis://127.0.0.1:6379/15")

app = Celery("imagemesh_bench", broker=URL, backend=URL)
app.conf.update(
    task_serializer="json", result_serializer="json", accept_content=["json"],
    task_default_queue="bench", worker_prefetch_multiplier=64, task_acks_late=False,
    worker_hijack_root_logger=False, broker_connection_retry_on_startup=True,
    result_expires=3600,
)


@app.task(name="bench.render")
def render_task(prompt: str, seed: int) -> str:
    return base64.b64encode(render(prompt, seed, 16, 16)).decode()
