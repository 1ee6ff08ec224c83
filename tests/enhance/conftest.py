"""Fixtures of the enhance tests: random weights written once, engines on them, tiny images.

The weights are RANDOM (python -m enhance_worker.weights random): the networks run for real on
the CPU and produce noise of the right size, which is what these tests check. Images are tiny
(64²–128²) so each test stays well under a minute on two cores.
"""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from enhance_worker.engine import EnhanceEngine
from enhance_worker.settings import EnhanceSettings
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import worker_pb2 as wpb


def image_bytes(width: int, height: int, fmt: str = "PNG", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def assignment(spec: pb.EnhanceSpec | None = None, *, name: str = "photo.png", attempt: int = 1,
               inputs: list[pb.OutputFile] | None = None, **spec_fields) -> wpb.Assignment:
    spec = spec or pb.EnhanceSpec(**spec_fields)
    return wpb.Assignment(attempt_id=f"task-{attempt}#1", task_id=f"task-{attempt}", attempt=1, fence=42,
                          budget_ms=60_000, output_filename=name, enhance=spec, inputs=inputs or [])


def settings(weights_dir, **overrides) -> EnhanceSettings:
    base = EnhanceSettings(weights_dir=str(weights_dir), metrics_port=-1, torch_threads=0, max_faces=2)
    return replace(base, **overrides)


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory):
    from enhance_worker.weights import write_random

    return write_random(tmp_path_factory.mktemp("weights"))


@pytest_asyncio.fixture(scope="session")
async def engine(random_weights):
    """The real models (random weights) on the CPU, loaded once for the session."""
    eng = await EnhanceEngine.create(settings(random_weights))
    yield eng
    await eng.close()


@pytest_asyncio.fixture(scope="session")
async def fallback_engine(tmp_path_factory):
    eng = await EnhanceEngine.create(settings(tmp_path_factory.mktemp("no-weights"), fallback=True))
    yield eng
    await eng.close()
