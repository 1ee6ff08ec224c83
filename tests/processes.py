"""Real processes for the mesh tests: a gateway and workers started with `python -m`, each
reporting its chosen ports on stdout (`GATEWAY=host:port`, `METRICS_PORT=n`, ...).

Every process started here is stopped by the test (fixture) that started it; `Mesh.close()`
kills whatever is still running, so no test leaves a process behind.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import ROOT, python_env

ADMIN_KEY = "test-admin-key-0123456789"
CLIENT_KEY = "test-client-key-0123456789"
OTHER_CLIENT_KEY = "test-other-client-key-0123"
WORKER_KEY = "test-worker-key-0123456789"
SECRET_KEY = "rY1l0dtMZ8bE3H0cJv2yYl0c9c5b2H3iQ1m2p9w4Zx8="  # a Fernet key for tests only


def api_keys_setting() -> str:
    import hashlib

    def h(k: str) -> str:
        return hashlib.sha256(k.encode()).hexdigest()

    return ",".join([f"ops:admin:{h(ADMIN_KEY)}", f"team-a:client:{h(CLIENT_KEY)}",
                     f"team-b:client:{h(OTHER_CLIENT_KEY)}", f"workers:worker:{h(WORKER_KEY)}"])


class Proc:
    """A child process whose stdout lines are collected; `announced(name)` waits for NAME=value."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=self._log)
        self.values: dict[str, str] = {}
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._lines.put(line)

    def announced(self, key: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while key not in self.values:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log:\n{self.log()}")
            try:
                line = self._lines.get(timeout=max(0.01, min(0.2, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} did not announce {key}; log:\n{self.log()}")
                continue
            name, sep, value = line.partition("=")
            if sep:
                self.values[name] = value
        return self.values[key]

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Mesh:
    """Gateways and workers on one Redis, started on demand."""

    def __init__(self, redis_url: str, log_dir: Path, **settings: str) -> None:
        self.redis_url = redis_url
        self.log_dir = log_dir
        self.settings = settings
        self.procs: list[Proc] = []
        self.gateways: list[Proc] = []
        self.workers: list[Proc] = []

    def env(self, **extra: str) -> dict[str, str]:
        base = {"IMAGEMESH_REDIS_URL": self.redis_url, "IMAGEMESH_API_KEYS": api_keys_setting(),
                "IMAGEMESH_SECRET_KEY": SECRET_KEY, "IMAGEMESH_METRICS_PORT": "0",
                "IMAGEMESH_HEALTH_PORT": "0", "IMAGEMESH_API_KEY": WORKER_KEY,
                "IMAGEMESH_LOG_LEVEL": "INFO",
                # Outputs in the test's own directory (the default is in the home directory).
                "IMAGEMESH_STORAGE_URL": str(self.log_dir / "store")}
        base.update({k: str(v) for k, v in self.settings.items()})
        base.update({k: str(v) for k, v in extra.items()})
        return python_env(**base)

    def start_gateway(self, **extra: str) -> Proc:
        p = Proc(f"gateway{len(self.gateways)}", ["gateway"],
                 self.env(**{"IMAGEMESH_LISTEN": "127.0.0.1:0", **extra}), self.log_dir)
        p.announced("GATEWAY")
        self.procs.append(p)
        self.gateways.append(p)
        return p

    @property
    def address(self) -> str:
        return self.gateways[0].values["GATEWAY"]

    def start_worker(self, module: str = "gen_worker", gateway: Proc | None = None, **extra: str) -> Proc:
        target = (gateway or self.gateways[0]).values["GATEWAY"]
        p = Proc(f"{module}{len(self.workers)}", [module],
                 self.env(IMAGEMESH_GATEWAY=target, IMAGEMESH_WORKER_ID=f"{module}-{len(self.workers)}", **extra),
                 self.log_dir)
        p.announced("HEALTH_PORT")
        self.procs.append(p)
        self.workers.append(p)
        return p

    def close(self) -> None:
        for p in reversed(self.procs):
            p.kill()
