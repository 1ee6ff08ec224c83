"""The enhance worker's settings (each one a flag and an IMAGEMESH_* variable: see `--help`)."""

from __future__ import annotations

from dataclasses import dataclass

from imagemesh.config import WorkerRuntimeSettings, at_least, port, positive, setting


HALF = ("auto", "", "on", "true", "1", "yes", "off", "false", "0", "no")  # as engine._half reads them


def _half(value: str) -> str:
    if value.strip().lower() not in HALF:
        raise ValueError(f"{value!r} is not auto, on or off")
    return value


@dataclass
class EnhanceSettings(WorkerRuntimeSettings):
    """ImageMesh enhance worker: GFPGAN face restoration and Real-ESRGAN upscaling, models resident."""

    # -- the worker runtime (imagemesh.config.WorkerRuntimeSettings), with enhance defaults ------
    capacity: int = setting(2, "Tasks held at once. Inference runs one image at a time; 2 keeps the model busy "
                               "while the next image is fetched and decoded. More only queues work here that "
                               "another worker could take", check=at_least(1))
    metrics_port: int = setting(9466, "Port of the Prometheus /metrics endpoint, plain HTTP (0: a free port; -1: off)",
                                check=port)
    health_port: int = setting(8082, "Port of the gRPC health service, plaintext (0: a free port; -1: off). SERVING "
                                     "only while connected to a gateway (so after the models load); 'liveness' "
                                     "once the models are loaded", check=port)
    drain_seconds: float = setting(120.0, "Grace for in-flight work on SIGTERM (an image can take a minute on a CPU)",
                                   check=at_least(0))

    # -- the models ----------------------------------------------------------------------------
    weights_dir: str = setting("weights", "Directory holding the weight files (`make weights` fills it)")
    device: str = setting("", "torch device: '' picks cuda when available, else cpu; or cpu, cuda, cuda:1")
    half: str = setting("auto", "fp16 for Real-ESRGAN: auto (on CUDA only), on, off",
                        check=_half)
    torch_threads: int = setting(0, "CPU threads torch may use (0: torch's default)", check=at_least(0))
    max_faces: int = setting(8, "Faces restored per image at most (highest detection scores first)",
                            check=at_least(0))
    fallback: bool = setting(False, "Run the labelled `lanczos-fallback` (OpenCV Lanczos resize, no faces) instead of the models")
    fallback_if_no_weights: bool = setting(False, "Use `lanczos-fallback` when a weight file is missing (demos); otherwise a missing file stops the worker")

    # -- admission and limits --------------------------------------------------------------------
    max_input_megapixels: float = setting(16.0, "Largest input accepted, in megapixels (larger fails INVALID_INPUT)",
                                          check=positive)
    max_side: int = setting(8192, "Longest input side accepted, in pixels", check=at_least(1))
    max_input_bytes: int = setting(32 * 1024 * 1024, "Largest encoded input (bytes, or fetched from image_url)",
                                   check=at_least(1))
    fetch_timeout: float = setting(30.0, "Total seconds fetching one image_url may take (connect, redirects and body)",
                                   check=at_least(0.1))
    cost_budget: float = setting(16.0, "Admitted work at once, in megapixels x upscale^2; the rest waits",
                                 check=positive)
    tile_cost: float = setting(0.0, "Largest Real-ESRGAN pass without tiling, in output megapixels (0: 4 on CUDA, 2 on CPU); "
                                    "larger images are tiled to this size", check=at_least(0))
    oom_retries: int = setting(3, "Retries of an image with halved tiles after the device ran out of memory",
                              check=at_least(0))
    allow_private_urls: bool = setting(False, "Let image_url fetch from private/loopback addresses (tests, private deployments)")
    jpeg_quality: int = setting(92, "JPEG quality of jpg outputs", check=at_least(1))
