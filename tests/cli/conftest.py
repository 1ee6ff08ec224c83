"""The CLI as a user runs it: `python -m imagemesh.cli ...` in a subprocess, stdout and stderr
pipes (not a terminal), COLUMNS unset, against real meshes (tests/processes.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from tests.conftest import ROOT, python_env
from tests.processes import Mesh


@dataclass
class Ran:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def out_lines(self) -> list[str]:
        return self.out.splitlines()

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def cli(*args: str, timeout: float = 60, **env: str) -> Ran:
    """Run the CLI to its end; a run longer than `timeout` fails the test (the process is killed)."""
    environ = python_env(**env)
    environ.pop("COLUMNS", None)
    environ.pop("LINES", None)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "imagemesh.cli", *args], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Ran(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


@pytest.fixture
def mesh_factory(redis_server, tmp_path):
    """Meshes on a flushed Redis; every process is killed when the test ends."""
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_server.url).flushall()
    made: list[Mesh] = []

    def make(**settings) -> Mesh:
        m = Mesh(redis_server.url, tmp_path, **settings)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


@pytest.fixture
def mesh(mesh_factory):
    """One gateway and one generation worker (the offline `local` provider)."""
    m = mesh_factory(IMAGEMESH_CAPACITY="8")
    m.start_gateway()
    m.start_worker()
    return m
