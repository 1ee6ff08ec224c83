"""Scenario 3 — no head-of-line blocking: a saturated key does not slow another key's tasks.

Two tokens for the fake Replicate, in two batches' credentials: key A (limit 2, 200 tasks) and
key B (limit 8, 200 tasks), 100 ms per job, 1 gateway + 2 workers of capacity 16 (room for
both limits at once, so only the mesh's scheduling could make B wait). Alternately, B alone
and B submitted right after A was accepted; B's makespan (its submit → its last result) with A
present over B alone should be ≤ 1.05. A is cancelled once B is done (A alone needs 10 s).
"""

from __future__ import annotations

import asyncio
import time

from bench import rig as R
from bench.measure import fmt, spread
from bench.traffic import BatchOutcome, replicate_tasks, run_batch
from imagemesh.client import Client

TITLE = "No head-of-line blocking (key A saturated, key B measured)"
BUDGET_S = 240
LATENCY = 0.1
A_TOKEN, A_LIMIT, A_TASKS = "tok-key-a", 2, 200
B_TOKEN, B_LIMIT, B_TASKS = "tok-key-b", 8, 200


async def _round(address: str, fake: R.FakeProvider, with_a: bool, rep: int) -> dict:
    fake.reset(LATENCY)
    async with Client(address, R.CLIENT_KEY) as client:
        a_out, a_task = BatchOutcome(), None
        if with_a:
            a_started = asyncio.Event()
            a_task = asyncio.create_task(run_batch(client, replicate_tasks(A_TASKS, prefix=f"a{rep}-"),
                                                   time.perf_counter(), credentials={"replicate": A_TOKEN},
                                                   started=a_started, out=a_out))
        try:
            if a_task is not None:
                await asyncio.wait_for(a_started.wait(), 30)
            b = await run_batch(client, replicate_tasks(B_TASKS, prefix=f"b{rep}-"), time.perf_counter(),
                                credentials={"replicate": B_TOKEN})
        finally:
            if a_task is not None:
                a_results_at_b_end = a_out.results
                if a_out.batch_id:
                    await client.cancel(a_out.batch_id)
                try:
                    await asyncio.wait_for(a_task, 30)  # A's summary: nothing of A left running
                except asyncio.TimeoutError:
                    pass
    stats = fake.stats()["tokens"]
    return {"with_a": with_a, "b_makespan_s": b.makespan, "b_states": dict(b.states), "b_first_error": b.first_error,
            "b_max_in_flight": stats.get(B_TOKEN, {}).get("max_in_flight"),
            "a_max_in_flight": stats.get(A_TOKEN, {}).get("max_in_flight") if with_a else None,
            "a_results_while_b_ran": a_results_at_b_end if with_a else None}


async def run(rig: R.Rig) -> dict:
    reps = 2 if rig.quick else 3
    runs: list[dict] = []
    with R.FakeProvider(latency=LATENCY) as fake:
        # A's key is named by an alias: SetKeyLimit accepts a key before its first batch only then.
        async with R.started_mesh(rig, "head_of_line", workers=2, IMAGEMESH_KEY_LIMITS=f"replicate={B_LIMIT}",
                                  IMAGEMESH_KEY_ALIASES=f"{R.key_id('replicate', A_TOKEN)}=tenant-a",
                                  worker_settings={"IMAGEMESH_CAPACITY": "16",
                                                   "IMAGEMESH_REPLICATE_BASE_URL": fake.url,
                                                   "IMAGEMESH_ALLOW_PRIVATE_URLS": "1"}) as m:
            async with Client(m.address, R.ADMIN_KEY) as admin:
                info = await admin.set_key_limit(R.key_id("replicate", A_TOKEN), A_LIMIT)
                if info.limit != A_LIMIT:
                    raise RuntimeError(f"SetKeyLimit answered limit {info.limit}, wanted {A_LIMIT}")
            await _round(m.address, fake, False, -1)  # warm-up
            for rep in range(reps):
                runs.append(await _round(m.address, fake, False, rep))
                runs.append(await _round(m.address, fake, True, rep))
    alone = spread([r["b_makespan_s"] for r in runs if not r["with_a"]], 3)
    together = spread([r["b_makespan_s"] for r in runs if r["with_a"]], 3)
    ratios = [w["b_makespan_s"] / a["b_makespan_s"]
              for a, w in zip([r for r in runs if not r["with_a"]], [r for r in runs if r["with_a"]])]
    ratio = alone and together and together["median"] / alone["median"]
    ideal_b = B_TASKS / B_LIMIT * LATENCY
    bad = [r for r in runs if r["b_states"].get("SUCCEEDED", 0) != B_TASKS]
    a_max = [r["a_max_in_flight"] for r in runs if r["with_a"]]
    b_max = [r["b_max_in_flight"] for r in runs]
    return {
        "table": {"columns": ["B's run", "B makespan s", "ideal s", "B max in flight", "A max in flight"],
                  "rows": [["B alone", fmt(alone, 3), f"{ideal_b:.2f}",
                            ", ".join(str(r["b_max_in_flight"]) for r in runs if not r["with_a"]), "—"],
                           ["B with A saturated", fmt(together, 3), f"{ideal_b:.2f}",
                            ", ".join(str(r["b_max_in_flight"]) for r in runs if r["with_a"]),
                            ", ".join(map(str, a_max))]]},
        "goals": [{"name": "B makespan with A / alone (medians)", "value": round(ratio, 3), "target": "<= 1.05",
                   "met": ratio <= 1.05},
                  {"name": "limits held at the fake (A ≤ 2, B ≤ 8)", "value": f"A {max(a_max)}, B {max(b_max)}",
                   "target": "A ≤ 2, B ≤ 8", "met": max(a_max) <= A_LIMIT and max(b_max) <= B_LIMIT}],
        "plots": [{"file": "head_of_line.png", "kind": "bars", "title": "Key B's makespan (200 tasks, limit 8, 100 ms)",
                   "ylabel": "seconds", "bars": [{"label": "B alone", **alone}, {"label": "B with A saturated", **together}]}],
        "notes": [f"{reps} repetitions, alone / with A alternating after a warm-up; per-pair ratios: "
                  f"{[round(x, 3) for x in ratios]}. A's limit set with MeshAdmin.SetKeyLimit; B keeps the default 8.",
                  f"A's results while B ran: {[r['a_results_while_b_ran'] for r in runs if r['with_a']]} "
                  f"(A's pace is 2 per 100 ms: it was saturated the whole time)."]
                 + ([f"runs where B had failures: {[(r['b_states'], r['b_first_error']) for r in bad]}"] if bad else []),
        "raw": runs,
    }
