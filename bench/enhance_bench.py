"""Enhance engine benchmark: resident models vs the bare library loop vs a process per image.

    python -m bench.enhance_bench [--json OUT] [--weights DIR] [--images 6]

Measures, on the same small images and the same weights (RANDOM unless --weights points at the
real ones — timings do not depend on the values, only on the shapes):

1. upscale (Real-ESRGAN ×2, no faces): images/s of `EnhanceEngine.run` (2 at a time, as a
   worker of capacity 2 runs them) vs a bare in-process loop over `RealESRGANer.enhance`;
2. faces (GFPGAN on the centre face + Real-ESRGAN ×2 background): the engine vs a bare loop over
   `GFPGANer.enhance` (the stock class, run from a directory holding `gfpgan/weights`, which is
   where it insists on finding the detector);
3. the replaced design: a fresh `python -c` process per image that imports the libraries, loads
   the models and enhances one image (2 images; its speed-up is per image);
4. a batch of 10 submitted at once: time to the first result vs one image alone;
5. peak RSS of this process with the engine loaded (measured before the bare objects load a
   second copy), and of one per-image process.

Engine and bare rounds alternate and the best round of each is kept: the machine is shared.

Runs on the CPU here (2 cores): keep it small, about 2–3 minutes in all.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

PER_PROCESS = r"""
import sys, time
t0 = time.perf_counter()
import torch, torchvision.transforms.functional as F
sys.modules['torchvision.transforms.functional_tensor'] = F
import cv2
from basicsr.archs.rrdbnet_arch import RRDBNet
from realesrgan import RealESRGANer
w, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
up = RealESRGANer(scale=2, model_path=f"{w}/RealESRGAN_x2plus.pth", model=RRDBNet(num_in_ch=3, num_out_ch=3,
                  num_feat=64, num_block=23, num_grow_ch=32, scale=2), tile=0, pre_pad=0, half=False)
t1 = time.perf_counter()
out, _ = up.enhance(cv2.imread(src), outscale=2)
cv2.imwrite(dst, out)
print(f"SPLIT import+load={t1 - t0:.2f} infer={time.perf_counter() - t1:.2f}", flush=True)
"""


def noise_png(side: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # kB on Linux


def spec(data: bytes, faces: bool):
    from imagemesh.v1 import imagemesh_pb2 as pb

    return pb.EnhanceSpec(image=data, upscale=2, restore_faces=faces, only_center_face=faces, output_format="png")


def assignment(i: int, data: bytes, faces: bool = False):
    from imagemesh.v1 import worker_pb2 as wpb

    return wpb.Assignment(attempt_id=f"b{i}#1", task_id=f"b{i}", attempt=1, output_filename=f"b{i}.png",
                          enhance=spec(data, faces))


class Bare:
    """The stock library objects, used the way the replaced services used them."""

    def __init__(self, weights_dir: Path) -> None:
        from enhance_worker import compat

        compat.install()
        import cv2
        from basicsr.archs.rrdbnet_arch import RRDBNet
        from gfpgan import GFPGANer
        from realesrgan import RealESRGANer

        self.cv2 = cv2
        self.up = RealESRGANer(scale=2, model_path=str(weights_dir / "RealESRGAN_x2plus.pth"),
                               model=RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32,
                                             scale=2), tile=0, pre_pad=0, half=False)
        # GFPGANer loads its detector from ./gfpgan/weights (and downloads it if absent): give it one.
        cwd = os.getcwd()
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "gfpgan").mkdir()
            (Path(tmp) / "gfpgan" / "weights").symlink_to(weights_dir.resolve())
            os.chdir(tmp)
            try:
                self.restorer = GFPGANer(model_path=str(weights_dir / "GFPGANv1.4.pth"), upscale=2, arch="clean",
                                         channel_multiplier=2, bg_upsampler=self.up)
            finally:
                os.chdir(cwd)

    def decode(self, d: bytes):
        return self.cv2.imdecode(np.frombuffer(d, np.uint8), self.cv2.IMREAD_COLOR)

    def upscale(self, images: list[bytes]) -> float:
        t0 = time.perf_counter()
        for d in images:
            img, _ = self.up.enhance(self.decode(d), outscale=2)
            self.cv2.imencode(".png", img)
        return time.perf_counter() - t0

    def faces(self, images: list[bytes]) -> float:
        t0 = time.perf_counter()
        for d in images:
            _, _, img = self.restorer.enhance(self.decode(d), has_aligned=False, only_center_face=True,
                                              paste_back=True)
            self.cv2.imencode(".png", img)
        return time.perf_counter() - t0


async def engine_phase(weights_dir: Path, images: list[bytes], face_images: list[bytes], rounds: int,
                       out: dict) -> None:
    from enhance_worker.engine import EnhanceEngine
    from enhance_worker.settings import EnhanceSettings
    from imagemesh.v1 import imagemesh_pb2 as pb

    t = time.perf_counter()
    engine = await EnhanceEngine.create(EnhanceSettings(weights_dir=str(weights_dir), metrics_port=-1))
    out["engine_load_s"] = time.perf_counter() - t
    out["device"] = engine.device
    try:
        await engine.run(assignment(-1, images[0]))  # warm-up (first-call allocations)

        async def run_all(datas, faces, capacity=2):
            gate = asyncio.Semaphore(capacity)

            async def one(i, d):
                async with gate:
                    r = await engine.run(assignment(i, d, faces))
                    assert r.state == pb.SUCCEEDED, r.error.message
            t0 = time.perf_counter()
            await asyncio.gather(*(one(i, d) for i, d in enumerate(datas)))
            return time.perf_counter() - t0

        # One image alone, then a batch of 10 of the same size submitted at once.
        t0 = time.perf_counter()
        await engine.run(assignment(100, images[0]))
        out["alone_s"] = time.perf_counter() - t0
        first: list[float] = []
        t0 = time.perf_counter()

        async def timed(i):
            await engine.run(assignment(200 + i, images[0]))
            first.append(time.perf_counter() - t0)
        await asyncio.gather(*(timed(i) for i in range(10)))
        out["batch10_first_s"] = min(first)
        out["batch10_total_s"] = max(first)
        out["peak_rss_engine_mb"] = peak_rss_mb()  # before the bare objects load a second copy

        # Engine and bare loop alternate, so that noise on a shared machine hits both alike.
        bare = Bare(weights_dir)
        bare.upscale(images[:1])  # warm-up
        out["upscale_engine_rounds_s"], out["upscale_bare_rounds_s"] = [], []
        for _ in range(rounds):
            out["upscale_engine_rounds_s"].append(await run_all(images, False))
            out["upscale_bare_rounds_s"].append(bare.upscale(images))
        out["faces_engine_rounds_s"], out["faces_bare_rounds_s"] = [], []
        for _ in range(rounds):
            out["faces_engine_rounds_s"].append(await run_all(face_images, True))
            out["faces_bare_rounds_s"].append(bare.faces(face_images))
        out["faces_engine_s"] = min(out["faces_engine_rounds_s"])
        out["faces_bare_s"] = min(out["faces_bare_rounds_s"])
        out["upscale_engine_s"] = min(out["upscale_engine_rounds_s"])
        out["upscale_bare_s"] = min(out["upscale_bare_rounds_s"])
    finally:
        await engine.close()


def per_process_phase(weights_dir: Path, images: list[bytes], out: dict) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times, splits = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, d in enumerate(images):
            src = Path(tmp) / f"in{i}.png"
            src.write_bytes(d)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", PER_PROCESS, str(weights_dir), str(src),
                                   str(Path(tmp) / f"out{i}.png")], env=env, capture_output=True, text=True,
                                  timeout=300)
            times.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            splits.extend(line for line in proc.stdout.splitlines() if line.startswith("SPLIT"))
    out["per_process_s"] = times
    out["per_process_split"] = splits
    out["peak_rss_child_mb"] = peak_rss_mb(resource.RUSAGE_CHILDREN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.enhance_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--weights", help="weights directory (default: RANDOM weights in a temporary one)")
    parser.add_argument("--images", type=int, default=6, help="upscale images (128²–192²)")
    parser.add_argument("--face-images", type=int, default=1, help="face images (128²; ~8 s each here)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating engine/bare rounds (best is kept)")
    parser.add_argument("--process-images", type=int, default=2, help="images for the process-per-image design")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    tmp = None
    if args.weights:
        weights_dir = Path(args.weights)
    else:
        from enhance_worker.weights import write_random

        tmp = tempfile.TemporaryDirectory(prefix="enhance-bench-weights-")
        weights_dir = write_random(tmp.name)
    sides = [128, 160, 192]
    images = [noise_png(sides[i % len(sides)], i) for i in range(args.images)]
    face_images = [noise_png(128, 1000 + i) for i in range(args.face_images)]
    out: dict = {"images": args.images, "image_sides": [sides[i % len(sides)] for i in range(args.images)],
                 "face_images": args.face_images, "random_weights": not args.weights,
                 "torch_threads": None}
    import torch

    out["torch_threads"] = torch.get_num_threads()
    asyncio.run(engine_phase(weights_dir, images, face_images, args.rounds, out))
    per_process_phase(weights_dir, images[: args.process_images], out)
    if tmp:
        tmp.cleanup()
    out["total_s"] = time.perf_counter() - started

    n, nf = args.images, args.face_images
    per_image_engine = out["upscale_engine_s"] / n
    per_process = sum(out["per_process_s"]) / len(out["per_process_s"])
    # Compare like with like: the process-per-image images are the first ones of the set.
    out["upscale_engine_images_per_s"] = n / out["upscale_engine_s"]
    out["upscale_bare_images_per_s"] = n / out["upscale_bare_s"]
    out["faces_engine_images_per_s"] = nf / out["faces_engine_s"]
    out["faces_bare_images_per_s"] = nf / out["faces_bare_s"]
    out["per_process_images_per_s"] = 1 / per_process
    out["speedup_vs_per_process"] = per_process / per_image_engine
    out["engine_vs_bare_upscale"] = out["upscale_bare_s"] / out["upscale_engine_s"]
    out["engine_vs_bare_faces"] = out["faces_bare_s"] / out["faces_engine_s"]

    print(f"\nenhance engine benchmark — device {out['device']}, torch threads {out['torch_threads']}, "
          f"{'RANDOM' if out['random_weights'] else 'real'} weights")
    rows = [
        ("upscale x2, engine (capacity 2)", f"{out['upscale_engine_images_per_s']:.2f} img/s",
         f"{n} images 128-192 px, best of {args.rounds}"),
        ("upscale x2, bare RealESRGANer loop", f"{out['upscale_bare_images_per_s']:.2f} img/s",
         f"engine/bare = {out['engine_vs_bare_upscale']:.2f}"),
        ("faces+x2, engine", f"{out['faces_engine_images_per_s']:.3f} img/s", f"{nf} image(s) 128 px, centre face, best of {args.rounds}"),
        ("faces+x2, bare GFPGANer loop", f"{out['faces_bare_images_per_s']:.3f} img/s",
         f"engine/bare = {out['engine_vs_bare_faces']:.2f}"),
        ("process per image (replaced design)", f"{out['per_process_images_per_s']:.3f} img/s",
         f"engine is {out['speedup_vs_per_process']:.1f}x faster per image"),
        ("one image alone", f"{out['alone_s']:.2f} s", "128 px, x2"),
        ("batch of 10: first result", f"{out['batch10_first_s']:.2f} s", f"all 10: {out['batch10_total_s']:.2f} s"),
        ("engine load (create)", f"{out['engine_load_s']:.2f} s", "readiness"),
        ("peak RSS, engine process", f"{out['peak_rss_engine_mb']:.0f} MB", "models resident"),
        ("peak RSS, one per-image process", f"{out['peak_rss_child_mb']:.0f} MB", ""),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>14}  {note}")
    for line in out["per_process_split"]:
        print(f"  per-process {line}")
    print(f"  total bench time {out['total_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
