"""The model weight files the enhance worker loads, where they come from, and how to get them.

    python -m enhance_worker.weights download DIR [--allow-unverified]   # official files, sha256-checked
    python -m enhance_worker.weights random DIR                          # RANDOM weights (tests, demos)
    python -m enhance_worker.weights check DIR

Every file is the upstream project's own GitHub release asset. The sha256 values are the
published digests of those assets (the same values are pinned by several independent projects
that vendor these files); a download whose digest differs is deleted, never loaded — a `.pth`
is a pickle, and loading a swapped one is running someone else's code.

`random` writes randomly initialised networks in exactly the layouts the loaders accept
(`{'params_ema': state_dict}` for GFPGAN and Real-ESRGAN, plain state dicts for facexlib's
RetinaFace and ParseNet) plus a `RANDOM_WEIGHTS` marker file. Outputs made with them are noise
with the right shape: good for tests and timing, useless for pictures. `is_random(dir)` tells.

What can go wrong: `check` raises `MissingWeights` naming the first missing file and the command
that fetches it; `download` raises `DownloadFailed` on HTTP errors or a digest mismatch (the
partial file is removed; files already present and verified are kept, so a rerun resumes).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

RANDOM_MARKER = "RANDOM_WEIGHTS"
FETCH_COMMAND = "make weights"


@dataclass(frozen=True)
class WeightFile:
    name: str
    url: str
    sha256: str
    size: int
    what: str


GFPGAN = WeightFile(
    "GFPGANv1.4.pth", "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",
    "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad", 348_632_874,
    "GFPGAN v1.4 face restorer (clean arch)")
REALESRGAN_X2 = WeightFile(
    "RealESRGAN_x2plus.pth", "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth",
    "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb", 67_061_725,
    "Real-ESRGAN x2plus upscaler")
REALESRGAN_X4 = WeightFile(
    "RealESRGAN_x4plus.pth", "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
    "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1", 67_040_989,
    "Real-ESRGAN x4plus upscaler")
DETECTOR = WeightFile(
    "detection_Resnet50_Final.pth", "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
    "6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d", 109_497_761,
    "facexlib RetinaFace (ResNet-50) face detector")
PARSER = WeightFile(
    "parsing_parsenet.pth", "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",
    "3d558d8d0e42c20224f13cf5a29c79eba2d59913419f945545d8cf7b72920de2", 85_331_193,
    "facexlib ParseNet face parser")

WEIGHTS: tuple[WeightFile, ...] = (GFPGAN, REALESRGAN_X2, REALESRGAN_X4, DETECTOR, PARSER)


class MissingWeights(FileNotFoundError):
    """A weight file the models need is not in the weights directory."""


class DownloadFailed(RuntimeError):
    """A weight file could not be fetched, or its digest did not match."""


def check(weights_dir: str | os.PathLike) -> Path:
    """Return the directory if every weight file is in it; else raise MissingWeights naming one."""
    root = Path(weights_dir)
    missing = [w for w in WEIGHTS if not (root / w.name).is_file()]
    if missing:
        names = ", ".join(w.name for w in missing)
        raise MissingWeights(
            f"weight file {missing[0].name} ({missing[0].what}) is missing from {root.resolve()}"
            f" (missing: {names}); fetch them with `{FETCH_COMMAND}` "
            f"(python -m enhance_worker.weights download {root}), or start the worker with "
            "--fallback-if-no-weights for the labelled lanczos-fallback mode")
    return root


def is_random(weights_dir: str | os.PathLike) -> bool:
    return (Path(weights_dir) / RANDOM_MARKER).exists()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- download ------------------------------------------------------------------------------------
def download(weights_dir: str | os.PathLike, *, allow_unverified: bool = False,
             timeout: float = 60.0, log=print, files: tuple[WeightFile, ...] = WEIGHTS) -> list[Path]:
    """Fetch every missing or unverified file into `weights_dir` (via `name.part`, then rename).

    A file already present with the right digest is kept. `allow_unverified` accepts a file
    whose published digest is unknown (none today: every entry has one) — never a mismatch.
    """
    import httpx

    root = Path(weights_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / RANDOM_MARKER).unlink(missing_ok=True)
    done: list[Path] = []
    with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(timeout, connect=15.0)) as client:
        for w in files:
            target = root / w.name
            if target.is_file() and w.sha256 and sha256_of(target) == w.sha256:
                log(f"{w.name}: present, sha256 ok")
                done.append(target)
                continue
            if not w.sha256 and not allow_unverified:
                raise DownloadFailed(f"{w.name}: no published sha256 is pinned; rerun with "
                                     "--allow-unverified to accept it unchecked")
            log(f"{w.name}: downloading {w.url} ({w.size / 1e6:.0f} MB)")
            part = target.with_name(target.name + ".part")
            digest = hashlib.sha256()
            try:
                with client.stream("GET", w.url) as response:
                    if response.status_code != 200:
                        raise DownloadFailed(f"{w.name}: {w.url} answered HTTP {response.status_code}")
                    with part.open("wb") as out:
                        for chunk in response.iter_bytes(1 << 20):
                            digest.update(chunk)
                            out.write(chunk)
            except httpx.HTTPError as exc:
                part.unlink(missing_ok=True)
                raise DownloadFailed(f"{w.name}: download from {w.url} failed: {type(exc).__name__}: {exc}") from None
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            got = digest.hexdigest()
            if w.sha256 and got != w.sha256:
                part.unlink(missing_ok=True)
                raise DownloadFailed(f"{w.name}: sha256 {got} does not match the published {w.sha256}; "
                                     "the file was deleted")
            part.replace(target)
            log(f"{w.name}: ok ({'sha256 verified' if w.sha256 else 'UNVERIFIED'})")
            done.append(target)
    return done


# -- random weights --------------------------------------------------------------------------------
def write_random(weights_dir: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write randomly initialised weights for every file (see the module docstring)."""
    import torch
    from facexlib.detection.retinaface import RetinaFace
    from facexlib.parsing.parsenet import ParseNet

    from .models import gfpgan_network, realesrgan_network  # installs the torchvision alias first

    root = Path(weights_dir)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    (root / RANDOM_MARKER).write_text(
        "These weights are RANDOM (python -m enhance_worker.weights random): outputs are noise of "
        "the right size. Run `make weights` for the real ones.\n")
    with warnings.catch_warnings():
        # facexlib builds its ResNet-50 with torchvision's deprecated `pretrained=False`.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision.models._utils")
        detector = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
    nets = {
        GFPGAN.name: {"params_ema": gfpgan_network().state_dict()},
        REALESRGAN_X2.name: {"params_ema": realesrgan_network(2).state_dict()},
        REALESRGAN_X4.name: {"params_ema": realesrgan_network(4).state_dict()},
        DETECTOR.name: detector.state_dict(),
        PARSER.name: ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict(),
    }
    for name, payload in nets.items():
        torch.save(payload, root / name)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enhance_worker.weights",
                                     description="Fetch, fake or check the enhance worker's model weights.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="download the official files and verify their sha256")
    d.add_argument("dir")
    d.add_argument("--allow-unverified", action="store_true",
                   help="accept a file whose published sha256 is unknown (never a mismatch)")
    r = sub.add_parser("random", help="write RANDOM weights in the loaders' formats (tests, demos)")
    r.add_argument("dir")
    r.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("check", help="exit 1 naming the first missing file")
    c.add_argument("dir")
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            download(args.dir, allow_unverified=args.allow_unverified)
        elif args.command == "random":
            write_random(args.dir, seed=args.seed)
            print(f"wrote RANDOM weights to {args.dir} (outputs will be noise)")
        else:
            check(args.dir)
            print(f"{args.dir}: all {len(WEIGHTS)} weight files present"
                  + (" (RANDOM weights)" if is_random(args.dir) else ""))
    except (MissingWeights, DownloadFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
