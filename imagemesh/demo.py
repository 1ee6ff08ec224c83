"""`make run`: a whole mesh on this machine, a demo batch streamed back, then a clean stop.

Starts a Redis server of its own (free port, temporary directory), one gateway, two generation
workers and one enhance worker as separate processes, submits `examples/tasks.json` through the
CLI code, prints each result as it finishes, then sends SIGTERM to everything and waits for it.

`--keep` leaves the mesh running (Ctrl-C stops it) and prints the two lines a new user needs to
point the `imagemesh` CLI at it.

Runs from a checkout (`make run`) or from the installed wheel with the `demo` extra
(`pip install 'imagemesh[demo]'`: the server's dependencies plus OpenCV for the enhance worker's
labelled fallback); without them it says in one line what to install.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A checkout has the deployables as top-level folders; the wheel ships them inside the package.
CHECKOUT = (ROOT / "gateway" / "__main__.py").is_file()
# What the mesh's processes import beyond the client's dependencies (the `demo` extra).
SERVER_MODULES = ("redis", "prometheus_client", "httpx", "cryptography", "PIL", "numpy", "grpc_health",
                  "grpc_reflection", "cv2")
ADMIN_KEY = "demo-admin-key"
CLIENT_KEY = "demo-client-key"
WORKER_KEY = "demo-worker-key"


def free_port(preferred: int = 0) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def default_tasks() -> Path:
    """examples/tasks.json of the checkout, else the copy shipped in the package."""
    checkout = ROOT / "examples" / "tasks.json"
    return checkout if checkout.is_file() else Path(__file__).resolve().parent / "examples" / "tasks.json"


def missing_modules() -> list[str]:
    return [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Child:
    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=logs)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited early:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)
        raise SystemExit(f"{self.name} did not become ready in {timeout:.0f}s (log: {self.log})")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imagemesh.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the mesh running after the demo batch")
    parser.add_argument("--tasks", default=str(default_tasks()))
    args = parser.parse_args(argv)
    if missing := missing_modules():
        raise SystemExit(f"the demo runs a whole mesh here and needs the server side: "
                         f"pip install 'imagemesh[demo]' (missing: {', '.join(missing)})")
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is missing: `make install` installs it (apt-get install redis-server)")

    tmp = Path(tempfile.mkdtemp(prefix="imagemesh-demo-"))
    redis_port, grpc_port = free_port(), free_port(50051)
    gateway = f"127.0.0.1:{grpc_port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "IMAGEMESH_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
           "IMAGEMESH_API_KEYS": f"demo-admin:admin:{_hash(ADMIN_KEY)},demo:client:{_hash(CLIENT_KEY)},"
                                 f"workers:worker:{_hash(WORKER_KEY)}",
           "IMAGEMESH_SECRET_KEY": "aW1hZ2VtZXNoLWRlbW8ta2V5LW5vdC1mb3ItcHJvZCE=",  # demo only
           "IMAGEMESH_GATEWAY": gateway, "IMAGEMESH_API_KEY": WORKER_KEY,
           "IMAGEMESH_METRICS_PORT": "0", "IMAGEMESH_HEALTH_PORT": "0",
           "IMAGEMESH_LOCAL_LATENCY_MS": "300", "IMAGEMESH_CAPACITY": "4",
           # The embedded store: outputs are files under this directory, served by DownloadFile.
           "IMAGEMESH_STORAGE_URL": str(tmp / "store")}
    if CHECKOUT:  # the children import the checkout's packages (the wheel's are installed)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    children: list[Child] = []
    py = sys.executable
    deployable = [py, "-m", "imagemesh.deployables"]
    print(f"starting redis-server :{redis_port}, a gateway on {gateway}, 2 generation workers, 1 enhance worker")
    print(f"logs: {tmp}")
    try:
        redis = Child("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp), "--maxmemory-policy", "noeviction"], env, tmp)
        children.append(redis)
        redis.wait_for("Ready to accept connections", 10)
        gw = Child("gateway", [*deployable, "gateway", "--listen", gateway], env, tmp)
        children.append(gw)
        gw.wait_for("GATEWAY=", 30)
        for i in range(2):
            w = Child(f"gen-worker-{i}", [*deployable, "gen_worker", "--worker-id", f"gen-{i}"], env, tmp)
            children.append(w)
        for w in children[-2:]:
            w.wait_for("connected to gateway", 30)
        # Real GFPGAN/Real-ESRGAN when `make weights` has fetched them; otherwise the
        # labelled lanczos-fallback (every result says so).
        ew = Child("enhance-worker", [*deployable, "enhance_worker", "--worker-id", "enhance-0",
                                      "--weights-dir", str(ROOT / "weights"), "--fallback-if-no-weights"],
                   env, tmp)
        children.append(ew)
        ew.wait_for("connected to gateway", 120)
        from imagemesh import cli

        print(f"\nsubmitting {args.tasks}\n")
        cli_env = ["--gateway", gateway, "--api-key", CLIENT_KEY]
        out = tmp / "results.json"
        try:
            cli.main([*cli_env, "submit", args.tasks, "--out", str(out), "--download", str(tmp / "outputs")])
        except SystemExit as exc:
            if exc.code not in (0, 1):
                raise
        print(f"\noutputs stored under {tmp / 'store'} (the gateway's embedded store), "
              f"downloaded to {tmp / 'outputs'}/<task>/; results in {out}")
        if args.keep:
            cli_path = Path(py).parent / "imagemesh"
            print("\nThe mesh keeps running (Ctrl-C stops it). In another terminal:\n"
                  f"  export IMAGEMESH_GATEWAY={gateway} IMAGEMESH_API_KEY={CLIENT_KEY}\n"
                  f"  {cli_path} submit {args.tasks} --download out/\n"
                  f"  {cli_path} download BATCH --zip batch.zip\n"
                  f"  (admin: IMAGEMESH_API_KEY={ADMIN_KEY} {cli_path} keys)")
            # Ctrl-C or SIGTERM stops the mesh (explicitly: a shell may start us with SIGINT ignored).
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    finally:
        print("\nstopping: SIGTERM to every process, waiting for each to drain")
        for child in reversed(children):
            code = child.stop()
            print(f"  {child.name}: exit {code}")


if __name__ == "__main__":
    main()
