"""The systematic sweep of issue 11: at every Redis command a gateway issues on a batch's path
(submit → dispatch → result → requeue → dedup → claim), inject a Redis error, and separately
crash the gateway right after the command took effect; run the batch through; check the
invariants (tests/faults/sweep.py: every task exactly one final result, the summary last with
nothing after it, one provider job per task unless a retry was due, no live lease, no queue
entry and no non-final task left).

Injection points are (label, occurrence) pairs of the fault proxy (tests/faults/redis_proxy.py)
on gateway A's Redis connection. `POINTS` lists them; `test_the_sweep_covers_every_command...`
records a clean run and fails when a command appears on the path that the sweep does not
cover, or a listed one no longer occurs, so the list stays complete as the code changes.

Points are each command's first occurrence, plus the later steps that share a label with an
earlier one (the push of a requeued attempt, a dedup leader's FINISH, its follower's copy...).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest
import redis.asyncio as aioredis

from gateway import batches, dedup, queues, retention, tenants
from imagemesh import leases
from tests.conftest import RedisServer
from tests.fakes.provider_server import FakeProviders
from tests.faults import sweep
from tests.faults.redis_proxy import RedisProxy
from tests.processes import Mesh

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

SCRIPTS = {**batches.SCRIPTS, **dedup.SCRIPTS, **retention.SCRIPTS, **queues.SCRIPTS, **tenants.SCRIPTS,
           **{n: getattr(leases, n) for n in ("ACQUIRE", "RENEW", "RELEASE", "HANDOVER", "ABANDON", "SET_LIMIT", "STATE")}}

# Commands issued on timers (renewals, touches, claims, gauges): how often they come depends on
# timing, so an injection there may not fire in a given run.
TIMED = {"RENEW", "XCLAIM im:q:{...}", "XAUTOCLAIM im:q:{...}", "XINFO GROUPS im:q:{...}",
         "XLEN im:q:{...}", "STATE", "ABANDON", "SCRIPT EXISTS", "XREAD im:{...}:ev", "ACQUIRE",
         "XREADGROUP im:q:{...}", "XRANGE im:q:{...}", "HANDOVER", "RELEASE"}
# Commands the sweep leaves alone: the connection handshake, and what an idle gateway does
# anyway (it is not on a batch's path; the lease and chaos tests cover an idle Redis fault).
# The event follower's connection handshake and wake-ups (CLIENT SETNAME, ID, UNBLOCK) are not a
# batch's steps either: tests/follower restarts Redis under it.
IGNORED_PREFIXES = ("SCRIPT LOAD", "CLIENT SETINFO", "PING", "HELLO", "SUBSCRIBE", "SMEMBERS im:queues",
                    "DEL im:gw:", "HSET im:gw:", "EXPIRE im:gw:", "ZADD im:gateways", "ZREMRANGEBYSCORE im:gateways",
                    "CLIENT SETNAME", "CLIENT ID", "CLIENT UNBLOCK", "CLIENT MAINT_NOTIFICATIONS")

# Every command a gateway issues on the scenario's batch (a clean run, gateway A's connection).
PATH = [
    "HGETALL im:{...}:meta", "SMEMBERS im:tenant:{...}:open", "CREATE", "SADD im:tenant:{...}:open",
    "EXPIRE im:tenant:{...}:open", "SCRIPT EXISTS", "HSET im:{...}:cred", "EXPIRE im:{...}:cred", "RECORDS",
    "DEDUP_JOIN", "TENANT_KEYS", "PUSH", "SADD im:queues", "PUBLISH im:work",
    "COMMIT", "XREAD im:{...}:ev", "XINFO GROUPS im:q:{...}", "XLEN im:q:{...}", "ACQUIRE",
    "SADD im:lease:keys", "XREADGROUP im:q:{...}", "START", "HGETALL im:{...}:cred", "RELEASE", "NEXT",
    "XACK im:q:{...}", "XDEL im:q:{...}", "RENEW", "XCLAIM im:q:{...}", "FINISH", "ABANDON",
    "XAUTOCLAIM im:q:{...}", "STATE", "HGET im:{...}:tasks", "DEDUP_TAKE", "DEL im:dd:{...}:taken:*",
    # Object storage: the tenant's stored bytes (quota), each batch indexed for retention at its
    # first assignment, the bytes of each stored output counted.
    "HGET im:{...}:tenant", "RETENTION_RECORD",
    # A finished job's lease handed to the gateway's next entry of the key.
    "HANDOVER",
    # The event follower (gateway.follower): a stream's first read of the log's head and the
    # batch's tenant, then its replay (the XREAD of the live fan-out is timed, above).
    "XREVRANGE im:{...}:ev", "HGET im:{...}:meta", "XRANGE im:{...}:ev",
]


def _argv(c, k: int) -> bytes | None:
    """ARGV[k] of a script call (EVALSHA sha numkeys keys... args...)."""
    try:
        return c.args[3 + int(c.args[2]) + k - 1]
    except (IndexError, ValueError):
        return None


def _finishes(c, index: bytes, attempt: bytes) -> bool:
    """Does this FINISH call (ARGV: retention, then index, attempt, state, payload, retire per
    result) record `index` from `attempt`? (Among the results the proxy kept the arguments of.)"""
    if c.label != "FINISH":
        return False
    k = 2
    while (i := _argv(c, k)) is not None:
        if i == index and _argv(c, k + 1) == attempt:
            return True
        k += 5
    return False


def _pushed_attempt(c) -> bytes | None:
    """The attempt number of the first entry a PUSH call appends (ARGV: group, n, fields...)."""
    fields = c.args[3 + int(c.args[2]) + 2:]
    return next((fields[k + 1] for k in range(0, len(fields) - 1, 2) if fields[k] == b"a"), None)


# Later steps of the path that share a label with earlier ones, by what they carry.
LATER = {
    "push of a requeued attempt": lambda c: c.label == "PUSH" and _pushed_attempt(c) == b"2",
    "FINISH of the fallback's second attempt": lambda c: _finishes(c, b"4", b"2"),
    "FINISH of the dedup leader": lambda c: _finishes(c, b"5", b"1"),
    "FINISH of the follower's copy": lambda c: _finishes(c, b"6", b"*"),
    "START of a second task": "START",
}
POINTS = [pytest.param(label, 1, id=label) for label in PATH] + \
         [pytest.param(match, 2 if match == "START" else 1, id=name) for name, match in LATER.items()]

class Env:
    def __init__(self, redis_server: RedisServer, proxy: RedisProxy, fake: FakeProviders, tmp) -> None:
        self.redis_server, self.proxy, self.fake, self.tmp = redis_server, proxy, fake, tmp
        self.r = aioredis.Redis.from_url(redis_server.url)
        self.n = 0

    async def fresh(self) -> tuple[sweep.Run, Mesh]:
        """A clean Redis (scripts preloaded, so every run issues the same commands), no rules."""
        self.n += 1
        await self.r.flushall()
        for text in SCRIPTS.values():
            await self.r.script_load(text)
        self.proxy.clear_rules()
        self.proxy.clear()
        run = sweep.fresh_run(self.n)
        sweep.arm(self.fake, run)
        mesh = Mesh(self.redis_server.url, self.tmp, **sweep.SETTINGS, IMAGEMESH_REPLICATE_BASE_URL=self.fake.url,
                    IMAGEMESH_OPENAI_BASE_URL=self.fake.url, IMAGEMESH_FAL_BASE_URL=self.fake.url)
        return run, mesh


@pytest.fixture(scope="module")
async def env(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("sweep-redis"))
    server.start()
    proxy = RedisProxy(server.port).start()
    proxy.register_scripts(SCRIPTS)
    try:
        async with FakeProviders(latency=0.2) as fake:
            e = Env(server, proxy, fake, tmp_path_factory.mktemp("sweep-logs"))
            yield e
            await e.r.aclose()
    finally:
        proxy.stop()
        server.stop()


def _joins(gateway) -> int:
    return gateway.log_path.read_text(errors="replace").count("joined pool")


async def test_the_sweep_covers_every_command_of_a_batchs_path(env):
    run, mesh = await env.fresh()
    try:
        a = mesh.start_gateway(IMAGEMESH_REDIS_URL=env.proxy.url)
        mesh.start_worker(gateway=a)
        await asyncio.sleep(1.0)
        env.proxy.clear()
        await sweep.submit(run, [a.values["GATEWAY"]])
        await sweep.check(run, env.r, env.fake, crashed=None, survivors=[a])
        commands = env.proxy.commands()
        seen = Counter(c.label for c in commands if not c.label.startswith(IGNORED_PREFIXES))
    finally:
        mesh.close()
    untimed = {label for label in seen if label not in TIMED}
    assert untimed <= set(PATH), f"commands on the path the sweep does not cover: {untimed - set(PATH)}"
    missing = {label for label in PATH if label not in TIMED and label not in seen}
    assert not missing, f"listed commands that no longer occur: {missing}"
    for name, match in LATER.items():
        hits = [c for c in commands if (c.label == match if isinstance(match, str) else match(c))]
        assert len(hits) >= (2 if match == "START" else 1), f"the later step {name!r} no longer occurs"


@pytest.mark.parametrize("label,nth", POINTS)
async def test_a_redis_error_at_any_command_loses_and_duplicates_nothing(env, label, nth):
    run, mesh = await env.fresh()
    try:
        a = mesh.start_gateway(IMAGEMESH_REDIS_URL=env.proxy.url)
        w = mesh.start_worker(gateway=a)
        rule = env.proxy.inject(label, "error", nth=nth)
        await sweep.submit(run, [a.values["GATEWAY"]])
        await sweep.check(run, env.r, env.fake, crashed=None, survivors=[a, w])
        assert rule.fired or label in TIMED, f"the injection point {label!r}#{nth} was never reached"
        assert _joins(a) == 1, "a Redis error must not end the worker's link:\n" + a.log()
    finally:
        mesh.close()


@pytest.mark.parametrize("label,nth", POINTS)
async def test_a_gateway_crash_after_any_command_loses_and_duplicates_nothing(env, label, nth):
    run, mesh = await env.fresh()
    stop = threading.Event()
    survivor = None
    try:
        a = mesh.start_gateway(IMAGEMESH_REDIS_URL=env.proxy.url)
        b = mesh.start_gateway()
        mesh.start_worker(gateway=a)
        rule = env.proxy.crash_after(label, a.proc.pid, nth=nth)
        # B gets its worker once A is dead, so that A alone walks the path up to the crash
        # point (with a worker of its own from the start, B would take part of the batch).
        survivor = asyncio.create_task(asyncio.to_thread(_worker_after, rule, mesh, b, stop))
        await sweep.submit(run, [a.values["GATEWAY"], b.values["GATEWAY"]])
        crashed = a if rule.fired else None
        await sweep.check(run, env.r, env.fake, crashed=crashed, survivors=[b])
        assert rule.fired or label in TIMED, f"the crash point {label!r}#{nth} was never reached"
    finally:
        stop.set()
        if survivor is not None:
            await survivor
        mesh.close()


def _worker_after(rule, mesh: Mesh, gateway, stop: threading.Event) -> None:
    while not stop.is_set():
        if rule.wait(0.1):
            mesh.start_worker(gateway=gateway)
            return
