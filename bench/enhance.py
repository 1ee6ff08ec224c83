"""Scenario 6 — enhance: bench.enhance_bench, run as its own process; its JSON is reported."""

from __future__ import annotations

from bench import rig as R
from bench.external import run_module

TITLE = "Enhance (GFPGAN + Real-ESRGAN on this CPU)"
BUDGET_S = 420


async def run(rig: R.Rig) -> dict:
    d = rig.log_dir("enhance")
    data = await run_module("enhance_bench", [], d / "enhance_bench.json", d / "enhance_bench.log", timeout=400)
    return {"external": {"enhance_bench": data},
            "notes": ["Figures from bench.enhance_bench (its docstring says what each one measures); weights are "
                      "random unless real ones were given — timings depend on shapes, not values."]}
