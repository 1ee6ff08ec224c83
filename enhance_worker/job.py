"""What one image asks of the models, and what comes back (no torch here: the fallback and the
engine use these without importing the models)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EnhanceOptions:
    upscale: int = 2                # 1, 2 or 4
    restore_faces: bool = False
    fidelity: float = 0.0           # 0..1: share of the original face kept (0 = GFPGAN as is)
    only_center_face: bool = False


@dataclass
class Enhanced:
    image: np.ndarray               # BGR uint8
    model: str                      # e.g. "GFPGANv1.4+RealESRGAN_x2plus"
    faces: int                      # faces restored
