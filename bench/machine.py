"""What the figures were measured on: cores, CPU model, memory, Python and package versions,
the commit, and how busy the machine was when the run started (the cores are shared)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata

import psutil

from tests.conftest import ROOT

PACKAGES = ["grpcio", "protobuf", "redis", "hiredis", "httpx", "aiohttp", "celery", "psutil", "matplotlib",
            "torch", "gfpgan", "realesrgan"]


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _run(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def describe() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    redis_server = shutil.which("redis-server")
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 1024 ** 3, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "redis_server": _run([redis_server, "--version"]).split(" sha=")[0] if redis_server else None,
        "packages": versions,
        "commit": _run(["git", "rev-parse", "--short", "HEAD"]),
        "dirty": bool(_run(["git", "status", "--porcelain", "--untracked-files=no"])),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
