"""`python -m bench [--only 1,4] [--quick] [--soak SECONDS]`: run the scenarios of issue #8.

Starts a Redis server of its own on a free port, runs each scenario within its time budget
(processes are stopped whatever happens), writes bench/results.json (with --only, the other
scenarios' last results are kept), regenerates bench/REPORT.md and the plots, prints the tables.
Exit status 1 when a scenario errored (a pending one is not an error).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shutil
import signal
import sys
import time
import traceback

from bench import (enhance, event_loop, fairness, head_of_line, idle_cost, key_limits, machine, memory, report,
                   scale_out, storage, streaming, throughput)
from bench.external import Pending
from bench.rig import Rig
from tests.conftest import RedisServer

SCENARIOS = {1: throughput, 2: key_limits, 3: head_of_line, 4: streaming, 5: scale_out, 6: enhance, 7: memory,
             8: storage, 9: fairness, 10: idle_cost, 11: event_loop}
DEFAULT_SOAK_S, QUICK_SOAK_S = 150.0, 30.0


def budget(module, rig: Rig) -> float:
    return module.run_budget(rig) if hasattr(module, "run_budget") else module.BUDGET_S


async def run_all(rig: Rig, chosen: list[int]) -> dict:
    # SIGTERM cancels the run, so every scenario's `finally` stops the processes it started.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    out = {}
    for n in chosen:
        mod = SCENARIOS[n]
        print(f"-- scenario {n}: {mod.TITLE} (budget {budget(mod, rig):.0f} s)", flush=True)
        t0 = time.monotonic()
        try:
            result = await asyncio.wait_for(mod.run(rig), budget(mod, rig))
            result["status"] = "pending" if result.get("pending") and not result.get("table") else "ok"
        except Pending as exc:
            result = {"status": "pending", "error": str(exc)}
        except (asyncio.TimeoutError, TimeoutError):
            result = {"status": "error", "error": f"ran over its budget of {budget(mod, rig):.0f} s"}
        except Exception as exc:
            tb = traceback.format_exc()
            print(tb, file=sys.stderr)
            result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:1500]}
        result["title"] = mod.TITLE
        result["duration_s"] = time.monotonic() - t0
        result["ran_at"] = datetime.datetime.now().isoformat(timespec="seconds")
        print(f"   {result['status']} in {result['duration_s']:.0f} s", flush=True)
        out[str(n)] = result
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated scenario numbers (1-10)")
    parser.add_argument("--quick", action="store_true", help="fewer tasks and repetitions, a 30 s soak")
    parser.add_argument("--soak", type=float, default=None, help=f"soak seconds (default {DEFAULT_SOAK_S:.0f})")
    args = parser.parse_args(argv)
    chosen = [int(x) for x in args.only.split(",") if x.strip()] or list(SCENARIOS)
    unknown = [n for n in chosen if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}: choose from {list(SCENARIOS)}")
    soak = args.soak if args.soak is not None else (QUICK_SOAK_S if args.quick else DEFAULT_SOAK_S)

    scratch = report.BENCH / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "redis").mkdir(parents=True)
    results_path = report.BENCH / "results.json"
    previous = json.loads(results_path.read_text()) if results_path.exists() and args.only else {}

    started = datetime.datetime.now().isoformat(timespec="seconds")
    desc = machine.describe()
    t0 = time.monotonic()
    redis = RedisServer(scratch / "redis")
    redis.start()
    try:
        rig = Rig(redis=redis, scratch=scratch, quick=args.quick, soak_seconds=soak)
        scenarios = asyncio.run(run_all(rig, chosen))
    finally:
        redis.stop()
    results = {"started": started, "duration_s": time.monotonic() - t0, "quick": args.quick, "soak_seconds": soak,
               "machine": desc, "only": chosen if args.only else None,
               "scenarios": {**previous.get("scenarios", {}), **scenarios}}
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    report.write(results)
    print(report.text(results))
    print(f"\nwrote {results_path} and {report.BENCH / 'REPORT.md'} ({results['duration_s']:.0f} s)")
    return 1 if any(s.get("status") == "error" for s in scenarios.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
