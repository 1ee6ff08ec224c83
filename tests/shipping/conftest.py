"""What the packaging tests share: the wheel, built once from a clean copy of its sources, and
fresh virtual environments with it installed the way another service would install it.

Measured here (2 shared cores, packages from the local cache): building the wheel ≈7 s, a venv
with the client only ≈5-11 s, one with the `demo` extra ≈15 s (≈350 MB, removed at the end);
the whole directory ≈55-75 s, hence the `packaging` marker (`-m "not packaging"` skips it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

# What the wheel is built from; the Dockerfiles copy exactly these (test_images checks it).
WHEEL_SOURCES = ("pyproject.toml", "setup.py", "README.md", "protos", "examples", "imagemesh", "gateway",
                 "gen_worker", "enhance_worker")
# Distributions a client-only install must not bring (they belong to the server extras or tools).
SERVER_ONLY = {"redis", "hiredis", "prometheus-client", "obstore", "cryptography", "pillow", "numpy",
               "grpcio-health-checking", "grpcio-reflection", "grpcio-tools", "opencv-python", "torch"}


class Venv:
    """A virtual environment outside the repository; commands run with the repository off sys.path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.python = str(path / "bin" / "python")

    def bin(self, name: str) -> str:
        return str(self.path / "bin" / name)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("IMAGEMESH_")}
        env.update(extra)
        return env

    def run(self, args: list[str], *, cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=cwd, env=self.env(**env), capture_output=True, text=True, timeout=timeout)

    def pip(self, *args: str) -> None:
        """pip from the test's own environment, acting on this venv (no pip inside it needed)."""
        subprocess.run([sys.executable, "-m", "pip", "--python", self.python, "--disable-pip-version-check",
                        "--quiet", *args], check=True, capture_output=True, text=True, timeout=600)

    def install(self, *requirements: str) -> None:
        self.pip("install", *requirements)

    def distributions(self) -> set[str]:
        out = subprocess.run([self.python, "-c", "import importlib.metadata as m, json; "
                              "print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"],
                             check=True, capture_output=True, text=True, cwd=self.path)
        return {name.lower().replace("_", "-") for name in json.loads(out.stdout)}


def make_venv(path: Path) -> Venv:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    return Venv(path)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of WHEEL_SOURCES (never from the worktree itself: an in-tree
    build leaves build/ behind, whose stale files would leak into later wheels)."""
    src = tmp_path_factory.mktemp("wheel-src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in WHEEL_SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, src / name, ignore=ignore)
        else:
            shutil.copy2(origin, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--wheel-dir", str(out), str(src)], check=True, capture_output=True, text=True, timeout=300)
    (built,) = out.glob("imagemesh-*.whl")
    return built


@pytest.fixture(scope="session")
def client_venv(wheel, tmp_path_factory):
    """A fresh venv with the wheel and nothing but the client's dependencies."""
    venv = make_venv(tmp_path_factory.mktemp("venv") / "client")
    venv.install(str(wheel))
    yield venv
    shutil.rmtree(venv.path, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_venv(wheel, tmp_path_factory):
    """A fresh venv with the wheel and its `demo` extra (the server side plus OpenCV)."""
    venv = make_venv(tmp_path_factory.mktemp("venv") / "demo")
    venv.install(f"{wheel}[demo]")
    yield venv
    shutil.rmtree(venv.path, ignore_errors=True)


# A service of someone else's that owns modules with our deployables' generic names.
SERVICE_MODULES = ("gateway", "gen_worker", "enhance_worker")
SERVICE_OWNER = "svc-app"


def service_sources(directory: Path) -> Path:
    """The service's packages in a source directory (as on a service's own PYTHONPATH)."""
    for name in SERVICE_MODULES:
        (directory / name).mkdir(parents=True, exist_ok=True)
        (directory / name / "__init__.py").write_text(f"OWNER = {SERVICE_OWNER!r}\n")
    return directory


def service_wheel(directory: Path) -> Path:
    """The same service as an installed distribution (a wheel written by hand: no build needed)."""
    dist_info = "svc_app-1.0.dist-info"
    files = {f"{name}/__init__.py": f"OWNER = {SERVICE_OWNER!r}\n" for name in SERVICE_MODULES}
    files[f"{dist_info}/METADATA"] = "Metadata-Version: 2.1\nName: svc-app\nVersion: 1.0\n"
    files[f"{dist_info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n"
    path = directory / "svc_app-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path
