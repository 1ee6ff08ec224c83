"""Celery baseline for scenario 1: N trivial tasks through Celery + Redis, end to end.

Two worker processes with the solo pool (the fastest configuration measured on this machine,
see FACTS.md), so the comparison is 2 Celery workers vs 2 generation workers. The client is a
`.delay()` loop followed by waiting for every result on the Redis result backend
(`ResultSet.join_native`, which reads them in bulk). A run that cannot finish in its budget
raises TimeoutError; workers are killed on the way out in every case.
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from bench.measure import cpu_seconds
from tests.conftest import ROOT, python_env


@contextmanager
def celery_workers(redis_url: str, n: int, log_dir: Path):
    env = python_env(BENCH_CELERY_REDIS=redis_url)
    procs, logs = [], []
    try:
        for i in range(n):
            log = open(log_dir / f"celery{i}.log", "wb")
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "--pool", "solo",
                 "-n", f"bench{i}@%h", "-Q", "bench", "--without-gossip", "--without-mingle",
                 "--without-heartbeat", "-l", "WARNING"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        _wait_ready(redis_url, n, procs)
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


def client_app(redis_url: str):
    """This process's Celery app, pointed at the bench Redis (before anything connects)."""
    from bench.celery_app import app
    app.conf.broker_url = app.conf.result_backend = redis_url
    return app


def _wait_ready(redis_url: str, n: int, procs, timeout: float = 60.0) -> None:
    app = client_app(redis_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a celery worker exited at start (see bench/scratch/*/celery*.log)")
        if len(app.control.ping(timeout=0.5) or []) >= n:
            return
    raise TimeoutError(f"celery workers did not answer ping within {timeout:.0f}s")


def run_celery(redis_url: str, n_tasks: int, procs, timeout: float) -> dict:
    """Submit n_tasks, wait for every result; returns wall seconds, tasks/s and worker CPU."""
    from celery.result import ResultSet

    from bench.celery_app import render_task
    client_app(redis_url)
    cpu0, client0 = sum(cpu_seconds(p.pid) for p in procs), time.process_time()
    t0 = time.perf_counter()
    results = [render_task.delay(f"c{i}", i) for i in range(n_tasks)]
    submitted = time.perf_counter() - t0
    values = ResultSet(results).join_native(timeout=timeout, propagate=True)
    wall = time.perf_counter() - t0
    cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
    client = time.process_time() - client0
    assert len(values) == n_tasks and all(values), "celery returned empty results"
    return {"wall_s": wall, "tasks_per_s": n_tasks / wall, "submit_s": submitted,
            "workers_cpu_s_per_1000": 1000 * cpu / n_tasks, "client_cpu_s_per_1000": 1000 * client / n_tasks}
