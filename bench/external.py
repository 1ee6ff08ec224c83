"""Benchmarks written as modules of their own (bench.lease_bench, bench.enhance_bench), run as
child processes that write a JSON file: `python -m bench.<name> [args] --json OUT`.

A module not written yet makes its scenario part `pending` (not an error). A module that
fails or overruns its budget raises, with the tail of its output in the message.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, python_env


class Pending(Exception):
    """The scenario (or a part of it) cannot run yet; the report says why."""


async def run_module(name: str, args: list[str], out: Path, log: Path, timeout: float) -> dict:
    if not (ROOT / "bench" / f"{name}.py").exists():
        raise Pending(f"bench/{name}.py is not written yet")
    out.unlink(missing_ok=True)

    def call() -> int:
        with open(log, "wb") as f:
            p = subprocess.Popen([sys.executable, "-m", f"bench.{name}", *args, "--json", str(out)],
                                 cwd=ROOT, env=python_env(), stdout=f, stderr=subprocess.STDOUT)
            try:
                return p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise TimeoutError(f"bench.{name} ran over its {timeout:.0f}s budget") from None

    code = await asyncio.to_thread(call)
    if code != 0 or not out.exists():
        tail = log.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"bench.{name} exited with {code}:\n{tail}")
    return json.loads(out.read_text())
