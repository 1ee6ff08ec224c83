"""The scenario and the invariants of the systematic fault sweep (tests/faults/test_sweep.py).

One run: a fresh Redis state, gateway A whose Redis traffic goes through the fault proxy,
(for crash runs) gateway B straight to Redis, a generation worker on each, the fake provider
over HTTP. One batch takes every path of dispatch:

    tasks 0-3   replicate, key limit 2 (leases: acquire, FIFO wait, renew, release)
    task 4      openai first, which answers 503: a fallback requeue to replicate
    tasks 5, 6  the same idempotency key: a deduplication leader and its follower

The client submits to A and, when A fails or dies, submits the same batch id again (to A
after an error, to B after a crash), as `imagemesh.Client` does. Then `check()` asserts what
issue 11 asks of every run: every task exactly one final result; the summary last, with nothing
after it; one provider job per task unless a retry was due; no live lease left; no queue entry
left; no task left non-final.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc
import redis.asyncio as aioredis

from gateway.batches import batch_ref
from imagemesh.leases import LeaseBook
from imagemesh.v1 import imagemesh_pb2 as pb
from imagemesh.v1 import imagemesh_pb2_grpc as pb_grpc
from tests.processes import CLIENT_KEY, Mesh, Proc

TASKS = 7
REPLICATE_JOBS = 6   # tasks 0-3, task 4 after its fallback, the dedup leader
OPENAI_CALLS = 1     # task 4's first attempt, answered 503 (one try per attempt: MAX_TRIES=1)
SETTINGS = dict(
    IMAGEMESH_DEFAULT_PROVIDERS="replicate", IMAGEMESH_KEY_LIMITS="replicate=2,openai=2",
    IMAGEMESH_ALLOW_PRIVATE_URLS="1", IMAGEMESH_LEASE_TTL="1", IMAGEMESH_MAX_JOB_RUNTIME="4",
    IMAGEMESH_HEARTBEAT_INTERVAL="0.5", IMAGEMESH_MAX_ATTEMPTS="6", IMAGEMESH_ACCEPT_TIMEOUT="2",
    IMAGEMESH_CAPACITY="4", IMAGEMESH_REPLICATE_PREFER_WAIT="0", IMAGEMESH_MAX_TRIES="1",
    IMAGEMESH_LOG_LEVEL="INFO")


def arm(fake, run: "Run") -> None:
    """Per run: openai answers the first call of this run's token with a 503."""
    fake.control(token=run.openai_token, errors=[503])


@dataclass
class Run:
    """What one run's batch saw, for `check()`."""

    batch_id: str
    replicate_token: str
    openai_token: str
    events: list[pb.BatchEvent] = field(default_factory=list)
    submit_errors: list[str] = field(default_factory=list)


def batch(run: Run) -> pb.SubmitBatchRequest:
    tasks = [pb.Task(output_filename=f"plain{i}.png", generate=pb.GenerateSpec(prompt=f"plain {i}"))
             for i in range(4)]
    tasks.append(pb.Task(output_filename="fallback.png",
                         generate=pb.GenerateSpec(prompt="fallback", providers=["openai", "replicate"])))
    twin = pb.GenerateSpec(prompt="twin", input={"seed": 7})
    tasks += [pb.Task(output_filename=f"twin{i}.png", idempotency_key="twin", generate=twin) for i in range(2)]
    return pb.SubmitBatchRequest(tasks=tasks, batch_id=run.batch_id,
                                 credentials={"replicate": run.replicate_token, "openai": run.openai_token})


async def submit(run: Run, targets: list[str], *, deadline: float = 60.0) -> None:
    """SubmitBatch on the first target; on any error, the same batch again on the next (the
    last target is kept), until the summary arrives. Events are kept once each (a resubmission
    streams the log from its start)."""
    request = batch(run)
    seen: dict[str, pb.BatchEvent] = {}
    end = time.monotonic() + deadline
    attempt = 0
    while time.monotonic() < end:
        target = targets[min(attempt, len(targets) - 1)]
        attempt += 1
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                api = pb_grpc.ImageMeshStub(channel)
                async for event in api.SubmitBatch(request, metadata=(("authorization", f"Bearer {CLIENT_KEY}"),),
                                                   timeout=max(1.0, end - time.monotonic())):
                    seen.setdefault(event.cursor, event)
                    if event.HasField("summary"):
                        run.events = sorted(seen.values(), key=lambda e: _cursor(e.cursor))
                        return
        except grpc.aio.AioRpcError as exc:
            run.submit_errors.append(f"{target}: {exc.code().name} {exc.details()}")
            await asyncio.sleep(0.2)
    run.events = sorted(seen.values(), key=lambda e: _cursor(e.cursor))
    raise AssertionError(f"no summary within {deadline}s; errors: {run.submit_errors[-3:]}")


def _cursor(c: str) -> tuple[int, int]:
    ms, _, seq = c.partition("-")
    return int(ms), int(seq)


async def check(run: Run, r: aioredis.Redis, fake, *, crashed: Proc | None, survivors: list[Proc]) -> None:
    """The invariants of every run (see the module docstring). `crashed`: the gateway that
    was killed, whose leases may be left as zombies (counted until their hard end, never live)."""
    events = run.events
    results = [e.result for e in events if e.HasField("result")]
    indexes = sorted(x.task_index for x in results)
    assert indexes == list(range(TASKS)), f"every task exactly one final result: {indexes}"
    assert events[0].HasField("accepted"), "accepted comes first"
    assert events[-1].HasField("summary") and events[-1].summary.total == TASKS
    assert {x.state for x in results} == {pb.SUCCEEDED}, [(x.task_index, x.error.code, x.error.message)
                                                          for x in results if x.state != pb.SUCCEEDED]
    await asyncio.sleep(0.5)  # anything late would land now
    log = await r.xrange(f"im:{{{batch_ref('team-a', run.batch_id)}}}:ev", min="(" + events[-1].cursor)
    assert log == [], f"nothing after the summary: {log}"
    states = await r.hmget(f"im:{{{batch_ref('team-a', run.batch_id)}}}:tasks", [f"{i}:st" for i in range(TASKS)])
    assert all(int(s) in (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED) for s in states), f"non-final: {states}"
    await _queues_drain(r)
    await _no_live_lease(r, crashed)
    jobs = fake.stats(run.replicate_token)["jobs"], fake.stats(run.openai_token)["calls"]
    if crashed is None:
        assert jobs == (REPLICATE_JOBS, OPENAI_CALLS), f"one provider job per task: {jobs}"
    else:
        # A job running on the crashed gateway's worker is cancelled and due again: at most the
        # key's limit of them for each key.
        assert REPLICATE_JOBS <= jobs[0] <= REPLICATE_JOBS + 2 and OPENAI_CALLS <= jobs[1] <= OPENAI_CALLS + 1, jobs
    for p in survivors:
        assert p.proc.poll() is None, f"{p.name} exited:\n{p.log()}"


async def _queues_drain(r: aioredis.Redis, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while True:
        left = {}
        for key in await r.smembers("im:queues"):
            n, pending = await r.xlen(key), (await r.xpending(key, "gw"))["pending"]
            if n or pending:
                left[key.decode()] = (n, pending)
        if not left:
            return
        assert time.monotonic() < end, f"queue entries left (length, pending): {left}"
        await asyncio.sleep(0.2)


async def _no_live_lease(r: aioredis.Redis, crashed: Proc | None, timeout: float = 8.0) -> None:
    book = LeaseBook(r, holder="sweep-observer", ttl=1.0, margin=0.25, max_job_runtime=4.0)
    dead = f"-{crashed.proc.pid}-" if crashed is not None else None
    end = time.monotonic() + timeout
    while True:
        held = {}
        for key_id in await book.known_keys():
            state = await book.state(key_id)
            live = [x for x in state.leases if not (dead and dead in x.holder and x.zombie)]
            if live or state.waiting:
                held[key_id] = ([(x.holder, x.ttl_ms, x.zombie) for x in live], state.waiting)
        if not held:
            return
        assert time.monotonic() < end, f"leases or tickets left: {held}"
        await asyncio.sleep(0.2)


def start_gateway(mesh: Mesh, redis_url: str) -> Proc:
    return mesh.start_gateway(IMAGEMESH_REDIS_URL=redis_url)


def fresh_run(n: int) -> Run:
    return Run(batch_id=f"sweep-{n}", replicate_token=f"r8_sweep_{n}_token_abcdefghijklmnop",
               openai_token=f"sk-sweep-{n}-token-abcdefghijklmnop")
