"""GFPGAN v1.4 + Real-ESRGAN, loaded once from a weights directory, run one image at a time.

`EnhanceModels.load(weights_dir)` builds:
- a `FaceRestorer` (a GFPGANer) whose facexlib detector and parser come from `weights_dir`;
- a Real-ESRGAN x2plus upsampler (background of restored images, and plain ×2 upscaling);
- a Real-ESRGAN x4plus upsampler (×4).

`enhance(image, options, tile)` is synchronous and NOT thread-safe: GFPGANer, its face helper
and RealESRGANer keep per-image state in attributes. The engine calls it from one dedicated
thread only.

Why `FaceRestorer` does not call `GFPGANer.__init__`: that constructor builds facexlib's
`FaceRestoreHelper` with `model_rootpath='gfpgan/weights'`, a path relative to the working
directory, and facexlib downloads whatever file it does not find there — at start-up, from
GitHub. We build the same network and helper ourselves with `model_rootpath=weights_dir`
(after `weights.check`, so every file is present and nothing is fetched) and inherit
`GFPGANer.enhance` unchanged.

Two upstream behaviours we guard against (see `GuardedNet`):
- `RealESRGANer.tile_process` and `GFPGANer.enhance` catch `RuntimeError` around each forward
  pass and print it: a CUDA out-of-memory error would become a crash on an unbound variable or a
  silently unrestored face. `GuardedNet` re-raises OOM as `DeviceOutOfMemory`, which is not a
  RuntimeError, so it reaches the engine, which retries with smaller tiles.
- A running image cannot be interrupted from outside the thread. `GuardedNet` checks a stop flag
  before every forward pass (each tile, each face), so a cancelled task frees the thread within
  one tile or one face.

Random face detectors find thousands of "faces"; real ones find crowds. `max_faces` caps the
faces restored per image (highest detection scores first).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Callable

from . import compat

compat.install()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
with warnings.catch_warnings():
    # basicsr imports scipy.ndimage.filters (deprecated) at import time; nothing we can change.
    warnings.simplefilter("ignore", DeprecationWarning)
    from basicsr.archs.rrdbnet_arch import RRDBNet  # noqa: E402
from facexlib.utils.face_restoration_helper import FaceRestoreHelper  # noqa: E402
from gfpgan.archs.gfpganv1_clean_arch import GFPGANv1Clean  # noqa: E402
from gfpgan.utils import GFPGANer  # noqa: E402
from realesrgan import RealESRGANer  # noqa: E402

from . import weights  # noqa: E402
from .job import Enhanced, EnhanceOptions  # noqa: E402

log = logging.getLogger("imagemesh.enhance.models")


def _print_to_debug_log(*args, **_kwargs) -> None:
    log.debug(" ".join(str(a) for a in args).strip())


# RealESRGANer prints a line per tile to stdout, which carries our `NAME=value` start-up
# announcements; shadowing the module's `print` sends those lines to the debug log instead.
import realesrgan.utils as _realesrgan_utils  # noqa: E402

_realesrgan_utils.print = _print_to_debug_log

Stop = Callable[[], bool]


class DeviceOutOfMemory(Exception):
    """The device ran out of memory in a forward pass. Deliberately not a RuntimeError (see above)."""


class Stopped(Exception):
    """The image's task was cancelled; raised at the next forward pass."""


def _never() -> bool:
    return False


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class GuardedNet:
    """Wraps a network called as `net(x, ...)`: checks the stop flag, maps OOM to DeviceOutOfMemory."""

    def __init__(self, net) -> None:
        self.net = net
        self.should_stop: Stop = _never

    def __call__(self, *args, **kwargs):
        if self.should_stop():
            raise Stopped()
        try:
            return self.net(*args, **kwargs)
        except RuntimeError as exc:
            if _is_oom(exc):
                raise DeviceOutOfMemory(str(exc).splitlines()[0]) from exc
            raise


def gfpgan_network() -> GFPGANv1Clean:
    """GFPGAN v1.4's network: arch 'clean', channel_multiplier 2 (as GFPGANer builds it)."""
    return GFPGANv1Clean(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                         fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1,
                         sft_half=True)


def realesrgan_network(scale: int) -> RRDBNet:
    """RealESRGAN_x2plus / x4plus: RRDBNet with 23 blocks."""
    return RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32, scale=scale)


def _load_checkpoint(path: Path) -> dict:
    # weights_only: a .pth is a pickle; refuse anything but tensors and plain containers.
    return torch.load(path, map_location="cpu", weights_only=True)


class FaceHelper(FaceRestoreHelper):
    """facexlib's helper with a face cap and a fidelity blend.

    `fidelity` (0..1) keeps that share of the original face: 0 is GFPGAN's output as is, 1 the
    input face. (GFPGANer's `weight` argument is ignored by the v1.4 'clean' network.)
    """

    max_faces = 8
    fidelity = 0.0

    def get_face_landmarks_5(self, *args, **kwargs):
        count = super().get_face_landmarks_5(*args, **kwargs)
        if len(self.all_landmarks_5) > self.max_faces:
            # Detections come sorted by score: keep the most confident ones.
            self.all_landmarks_5 = self.all_landmarks_5[: self.max_faces]
            self.det_faces = self.det_faces[: self.max_faces]
        return count

    def add_restored_face(self, face):
        if self.fidelity > 0:
            original = self.cropped_faces[len(self.restored_faces)]
            face = cv2.addWeighted(face, 1.0 - self.fidelity, original, self.fidelity, 0.0)
        super().add_restored_face(face)


class FaceRestorer(GFPGANer):
    """A GFPGANer (v1.4, clean arch, channel multiplier 2) loaded from `weights_dir` only."""

    def __init__(self, weights_dir: Path, device: torch.device) -> None:  # noqa: super-init deliberately skipped
        self.upscale = 2
        self.bg_upsampler = None
        self.device = device
        net = gfpgan_network()
        checkpoint = _load_checkpoint(weights_dir / weights.GFPGAN.name)
        net.load_state_dict(checkpoint["params_ema"] if "params_ema" in checkpoint else checkpoint["params"],
                            strict=True)
        self.gfpgan = GuardedNet(net.eval().to(device))
        self.face_helper = FaceHelper(
            2, face_size=512, crop_ratio=(1, 1), det_model="retinaface_resnet50", save_ext="png",
            use_parse=True, device=device, model_rootpath=str(weights_dir))
        self.face_helper.face_parse = GuardedNet(self.face_helper.face_parse)


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class EnhanceModels:
    """The loaded networks. Build with `load`; call `enhance` from one thread at a time."""

    def __init__(self, restorer: FaceRestorer, upsamplers: dict[int, RealESRGANer],
                 device: torch.device, half: bool, random_weights: bool, max_faces: int) -> None:
        self.restorer = restorer
        self.upsamplers = upsamplers
        self.device = device
        self.half = half
        self.random_weights = random_weights
        self.restorer.face_helper.max_faces = max_faces

    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            return f"cuda:{self.device.index or 0}"
        return self.device.type

    @classmethod
    def load(cls, weights_dir: str | os.PathLike, device: str | torch.device | None = None,
             half: bool | None = None, max_faces: int = 8) -> "EnhanceModels":
        """Load every network from `weights_dir` (raises weights.MissingWeights first if one is missing).

        `device`: None picks CUDA when available, else the CPU. `half`: None means fp16 on CUDA
        (Real-ESRGAN only: GFPGANer feeds float32 tensors), never on the CPU.
        """
        root = weights.check(Path(weights_dir).resolve())
        dev = device if isinstance(device, torch.device) else pick_device(device)
        use_half = (dev.type == "cuda") if half is None else (half and dev.type == "cuda")
        with warnings.catch_warnings():
            # facexlib builds its ResNet-50 with torchvision's deprecated `pretrained=False`.
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision.models._utils")
            restorer = FaceRestorer(root, dev)
        upsamplers = {}
        for scale, wf in ((2, weights.REALESRGAN_X2), (4, weights.REALESRGAN_X4)):
            up = RealESRGANer(scale=scale, model_path=str(root / wf.name), model=realesrgan_network(scale),
                              tile=0, tile_pad=10, pre_pad=0, half=use_half, device=dev)
            up.model = GuardedNet(up.model)
            upsamplers[scale] = up
        log.info("models loaded from %s on %s%s%s", root, dev, " (fp16)" if use_half else "",
                 " — RANDOM weights" if weights.is_random(root) else "")
        return cls(restorer, upsamplers, dev, use_half, weights.is_random(root), max_faces)

    def _guards(self) -> list[GuardedNet]:
        return [self.restorer.gfpgan, self.restorer.face_helper.face_parse,
                *(up.model for up in self.upsamplers.values())]

    def enhance(self, image: np.ndarray, options: EnhanceOptions, *, tile: int = 0,
                should_stop: Stop = _never) -> Enhanced:
        """Enhance one BGR uint8 image. Raises DeviceOutOfMemory, Stopped, or the library's error."""
        for guard in self._guards():
            guard.should_stop = should_stop
        try:
            return self._enhance(image, options, tile)
        finally:
            for guard in self._guards():
                guard.should_stop = _never

    def _enhance(self, image: np.ndarray, options: EnhanceOptions, tile: int) -> Enhanced:
        scale = options.upscale
        upsampler = self.upsamplers.get(scale)
        if upsampler is not None:
            upsampler.tile_size = tile
        parts = []
        if options.restore_faces:
            restorer = self.restorer
            restorer.upscale = scale
            restorer.bg_upsampler = upsampler  # None for ×1: faces are pasted into the input itself
            restorer.face_helper.set_upscale_factor(scale)
            restorer.face_helper.fidelity = options.fidelity
            _, restored, out = restorer.enhance(image, has_aligned=False, only_center_face=options.only_center_face,
                                                paste_back=True, weight=options.fidelity)
            parts.append("GFPGANv1.4")
            faces = len(restored)
        elif upsampler is not None:
            out, _ = upsampler.enhance(image, outscale=scale)
            faces = 0
        else:
            out = image.copy()  # ×1 without faces: nothing to do
            faces = 0
        if upsampler is not None:
            parts.append(f"RealESRGAN_x{scale}plus")
        model = "+".join(parts) or "passthrough"
        if self.random_weights:
            model += " (RANDOM weights)"
        return Enhanced(image=out, model=model, faces=faces)

    def empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def memory_allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
