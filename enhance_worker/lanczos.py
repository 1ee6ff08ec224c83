"""`lanczos-fallback`: a classical stand-in for the models, chosen explicitly, never silently.

OpenCV's Lanczos resize, no face restoration. It exists so `make run` shows the enhance pool
working on a machine without the model weights (the worker starts with `--fallback` or
`--fallback-if-no-weights`). Every result it produces says model `lanczos-fallback`, so nobody
mistakes its output for Real-ESRGAN's. Same interface as `EnhanceModels` (`enhance`).
"""

from __future__ import annotations

import cv2
import numpy as np

from .job import Enhanced

MODEL_NAME = "lanczos-fallback"


class LanczosModels:
    device_name = "cpu"
    random_weights = False

    def enhance(self, image: np.ndarray, options, *, tile: int = 0, should_stop=None):
        h, w = image.shape[:2]
        s = options.upscale
        out = image.copy() if s == 1 else cv2.resize(image, (w * s, h * s), interpolation=cv2.INTER_LANCZOS4)
        return Enhanced(image=out, model=MODEL_NAME, faces=0)

    def empty_cache(self) -> None:
        pass

    def memory_allocated(self) -> int:
        return 0
