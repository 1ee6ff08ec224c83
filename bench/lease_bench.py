"""Lease benchmark: N tasks on one key through LeaseBook vs the same work under asyncio.Semaphore.

    python -m bench.lease_bench [--redis-url URL] [--json OUT] [--tasks 400] [--limit 8] [--latency 0.1]

Without --redis-url it starts its own redis-server on a free port (no persistence, in a temp
dir). Each task: acquire one lease → a stand-in provider call (asyncio.sleep(latency)) →
release. Reported:
- makespan and efficiency = ideal / makespan, ideal = ceil(tasks / limit) × latency (goal ≥ 0.97);
- max in flight (must be exactly the limit);
- hand-off: from a task calling release() to the next waiter's acquire() returning (p50/p99,
  goal p99 < 5 ms): the wake-up is a PUBLISH from the release script, no polling;
- Redis commands per task from INFO commandstats (all commands, script internals included,
  and the EVALSHA round trips alone);
- the same workload through asyncio.Semaphore(limit), and the ratio of the two makespans.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections import deque

import redis.asyncio as aioredis

from gateway import redis_client
from imagemesh.leases import LeaseBook


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis() -> tuple[subprocess.Popen, str, tempfile.TemporaryDirectory]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found: give --redis-url or install redis-server")
    port, tmp = _free_port(), tempfile.TemporaryDirectory()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp.name, "--daemonize", "no",
                             "--maxmemory-policy", "noeviction", "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"redis://127.0.0.1:{port}/0", tmp
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("redis-server did not start")


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def _commandstats(r: aioredis.Redis) -> tuple[int, int]:
    stats = await r.info("commandstats")
    total = sum(v.get("calls", 0) for k, v in stats.items() if k != "cmdstat_info")
    return total, stats.get("cmdstat_evalsha", {}).get("calls", 0)


async def run_leases(url: str, tasks: int, limit: int, latency: float) -> dict:
    r = redis_client.client(url, socket_timeout=5.0)  # as the gateway connects
    book = LeaseBook(r, holder=f"bench-{secrets.token_hex(3)}", default_limit=limit)
    await book.start()
    key = f"bench:{secrets.token_hex(4)}"
    await book.set_limit(key, limit)
    await book.release(await book.try_acquire(key))  # scripts loaded, key known: not measured
    in_flight = max_in_flight = 0
    releases: deque[float] = deque()
    handoffs: list[float] = []
    waits: list[float] = []

    async def task() -> None:
        nonlocal in_flight, max_in_flight
        asked = time.perf_counter()
        leases = await book.acquire(key)
        got = time.perf_counter()
        waits.append(got - asked)
        if releases:
            handoffs.append(got - releases.popleft())
        in_flight += 1
        max_in_flight = max(max_in_flight, in_flight)
        await asyncio.sleep(latency)
        in_flight -= 1
        releases.append(time.perf_counter())
        await book.release(leases)

    before = await _commandstats(r)
    t0 = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(tasks)))
    makespan = time.perf_counter() - t0
    after = await _commandstats(r)
    state = await book.state(key)
    await book.aclose()
    await r.aclose()
    return {"makespan_s": makespan, "max_in_flight": max_in_flight,
            "handoff_p50_ms": _pct(handoffs, 50) * 1000, "handoff_p99_ms": _pct(handoffs, 99) * 1000,
            "handoff_max_ms": max(handoffs) * 1000 if handoffs else float("nan"),
            "handoffs": len(handoffs), "wait_p50_s": statistics.median(waits),
            "redis_commands_per_task": (after[0] - before[0]) / tasks,
            "evalsha_per_task": (after[1] - before[1]) / tasks,
            "left_in_use": state.in_use, "left_waiting": state.waiting}


async def run_semaphore(tasks: int, limit: int, latency: float) -> dict:
    sem = asyncio.Semaphore(limit)
    in_flight = max_in_flight = 0

    async def task() -> None:
        nonlocal in_flight, max_in_flight
        async with sem:
            in_flight += 1
            max_in_flight = max(max_in_flight, in_flight)
            await asyncio.sleep(latency)
            in_flight -= 1

    t0 = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(tasks)))
    return {"makespan_s": time.perf_counter() - t0, "max_in_flight": max_in_flight}


async def bench(url: str, tasks: int, limit: int, latency: float) -> dict:
    ideal = math.ceil(tasks / limit) * latency
    leases = await run_leases(url, tasks, limit, latency)
    sem = await run_semaphore(tasks, limit, latency)
    leases["efficiency"] = ideal / leases["makespan_s"]
    sem["efficiency"] = ideal / sem["makespan_s"]
    return {"tasks": tasks, "limit": limit, "latency_s": latency, "ideal_s": ideal,
            "leases": leases, "semaphore": sem,
            "makespan_ratio_leases_over_semaphore": leases["makespan_s"] / sem["makespan_s"]}


def print_table(res: dict) -> None:
    le, se = res["leases"], res["semaphore"]
    print(f"{res['tasks']} tasks, one key, limit {res['limit']}, latency {res['latency_s'] * 1000:.0f} ms, "
          f"ideal {res['ideal_s']:.2f} s")
    print(f"{'':22}{'LeaseBook':>12}{'Semaphore':>12}")
    print(f"{'makespan (s)':22}{le['makespan_s']:>12.3f}{se['makespan_s']:>12.3f}")
    print(f"{'efficiency':22}{le['efficiency']:>12.3f}{se['efficiency']:>12.3f}")
    print(f"{'max in flight':22}{le['max_in_flight']:>12}{se['max_in_flight']:>12}")
    print(f"{'hand-off p50 (ms)':22}{le['handoff_p50_ms']:>12.2f}")
    print(f"{'hand-off p99 (ms)':22}{le['handoff_p99_ms']:>12.2f}")
    print(f"{'hand-off max (ms)':22}{le['handoff_max_ms']:>12.2f}")
    print(f"{'Redis cmds / task':22}{le['redis_commands_per_task']:>12.1f}")
    print(f"{'EVALSHA / task':22}{le['evalsha_per_task']:>12.2f}")
    print(f"makespan ratio leases/semaphore: {res['makespan_ratio_leases_over_semaphore']:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--redis-url")
    p.add_argument("--json", dest="json_out")
    p.add_argument("--tasks", type=int, default=400)
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--latency", type=float, default=0.1)
    a = p.parse_args()
    server = None
    url = a.redis_url
    if url is None:
        server, url, tmp = start_redis()
    try:
        res = asyncio.run(bench(url, a.tasks, a.limit, a.latency))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
    print_table(res)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
