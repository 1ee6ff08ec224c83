"""Batches in Redis: task records, the per-batch event log, counters and the summary.

All of a batch's keys share the hash tag `{<batch_id>}`, so every script below touches one slot
and works on Redis Cluster:

    im:{B}:meta   hash    tenant, mode (batch|session), created_ms, total, closed, acc, ok,
                          failed, cancelled, done, bytes, digest, writer, writer_until
    im:{B}:tasks  hash    per task i:
                            i:st      TaskState
                            i:att     newest attempt number
                            i:a:<n>   attempt n is live (i:live counts them)
                            i:run:<n> the queue entry that started attempt n (one entry runs it)
                            i:nx:<k>  the attempt that replaced attempt k (a requeue, done once)
                            i:hx:<k>  the attempt hedged from attempt k
                            i:acc     the task's acceptance is in the log (session tasks)
                            i:fn      output filename       i:pl  pool (g|e)
                            i:dd      deduplication identity; then i:res keeps the final result
    im:{B}:ev     stream  the batch's events; entry ids are the clients' cursors
    im:{B}:stash  hash    i -> a result recorded before the task's acceptance was logged
    im:{B}:cred   hash    provider -> sealed caller token (see imagemesh.credentials)

Every key expires `retention` seconds after the batch was created or finished.

Accept-once (invariant 4, 9). A batch is accepted in steps, each idempotent, so that any number
of concurrent or repeated `SubmitBatch` calls with one batch id, and a crash between any two
steps, write and enqueue each task once and never reset a task:

    CREATE   reserve the id: one caller becomes the *writer* (a token with a deadline); the
             others wait for it, or take over once its deadline passed (it crashed)
    RECORDS  task records, written only where absent (a final task is never reset)
    push     queue entries (gateway.queues); a duplicate from a taken-over writer is harmless:
             START lets one entry per attempt run
    COMMIT   the `accepted` event, only by the current writer; then results recorded before it
             (a fast task, a cancel) are appended from the stash, so `accepted` is always first

Exactly-once results rest on FINISH: it moves a task to a final state only if the task is not
final yet and the reporting attempt is still live. Any number of stale, duplicate or late
reports can arrive; one wins. NEXT (a requeue) is idempotent per replaced attempt, so a
gateway that dies between NEXT, the push of the new entry and the ack of the old one is
recovered by whoever claims the old entry: it gets the same new attempt number, and START
runs only one of the two entries that may then exist.

States are named in Lua through gateway.states (generated from the proto enum).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from imagemesh.v1 import imagemesh_pb2 as pb

from .lua import Scripts
from .states import FINAL, LUA_STATES

FINAL_STATES = FINAL
CURSOR = re.compile(r"\A\d{1,20}-\d{1,20}\Z")

# Shared head of every task script: states, a task's state, whether an attempt is live, and
# whether the task's acceptance is in the log (a whole batch at COMMIT, a session task alone).
_TASK = LUA_STATES + """
local function state(tasks, i)
  return tonumber(redis.call('HGET', tasks, i .. ':st') or '-1')
end
local function live(tasks, i, attempt)
  return redis.call('HEXISTS', tasks, i .. ':a:' .. attempt) == 1
end
-- Attempts of the task that are live besides k (a hedge counts once its entry started).
local function others_live(tasks, i, k)
  local n = tonumber(redis.call('HGET', tasks, i .. ':live') or '0')
  if redis.call('HGET', tasks, i .. ':a:' .. k) == '1' then n = n - 1 end
  return n > 0
end
-- Attempt k stops being live.
local function retire(tasks, i, k)
  if redis.call('HGET', tasks, i .. ':a:' .. k) == '1' then redis.call('HINCRBY', tasks, i .. ':live', -1) end
  redis.call('HDEL', tasks, i .. ':a:' .. k)
end
local function accepted(meta, tasks, i)
  local m = redis.call('HMGET', meta, 'mode', 'acc')
  if m[1] == 'session' then return redis.call('HEXISTS', tasks, i .. ':acc') == 1 end
  return m[2] == '1'
end
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end
"""

# Shared tail: append the summary once every task is final and no more can be added, and keep
# the batch `retention` seconds from now.
_SUMMARY = """
local function maybe_summary(meta, events, tasks, retention)
  local m = redis.call('HMGET', meta, 'total', 'ok', 'failed', 'cancelled', 'closed', 'created_ms', 'done', 'acc')
  local total, ok, failed, cancelled = tonumber(m[1]), tonumber(m[2]), tonumber(m[3]), tonumber(m[4])
  if m[5] ~= '1' or m[7] == '1' or m[8] ~= '1' or ok + failed + cancelled < total then return end
  local now = now_ms()
  redis.call('HSET', meta, 'done', 1, 'finished_ms', now)
  redis.call('XADD', events, '*', 'k', 'summary', 'total', total, 'ok', ok, 'failed', failed,
             'cancelled', cancelled, 'duration_ms', now - tonumber(m[6]))
  redis.call('EXPIRE', meta, retention)
  redis.call('EXPIRE', events, retention)
  redis.call('EXPIRE', tasks, retention)
end
-- A final result: counted and logged if the task's acceptance is logged, stashed otherwise.
local function record(meta, events, tasks, stash, i, st, payload, retention)
  if accepted(meta, tasks, i) then
    redis.call('HINCRBY', meta, COUNTER[st], 1)
    redis.call('XADD', events, '*', 'k', 'result', 'd', payload)
    maybe_summary(meta, events, tasks, retention)
  else
    redis.call('HSET', stash, i, payload)
    redis.call('EXPIRE', stash, retention)
  end
end
"""

# KEYS: meta. ARGV: tenant, total, closed (0|1), retention s, input bytes, writer token,
# writer ttl ms, digest, mode (batch|session).
# Returns {1} created (the caller writes), {2} taken over from a writer whose deadline passed
# (the caller writes), {3, ms} another writer is at work (ask again), {0} already accepted,
# {-1} another tenant's id, {-2} this id was used for different tasks.
_CREATE = _TASK + """
local m = redis.call('HMGET', KEYS[1], 'tenant', 'acc', 'writer_until', 'digest')
local now = now_ms()
if m[1] then
  if m[1] ~= ARGV[1] then return {-1} end
  if ARGV[8] ~= '' and m[4] and m[4] ~= '' and m[4] ~= ARGV[8] then return {-2} end
  if m[2] == '1' then return {0} end
  local until_ms = tonumber(m[3] or '0')
  if until_ms > now then return {3, until_ms - now} end
  redis.call('HSET', KEYS[1], 'writer', ARGV[6], 'writer_until', now + tonumber(ARGV[7]))
  return {2}
end
redis.call('HSET', KEYS[1], 'tenant', ARGV[1], 'mode', ARGV[9], 'created_ms', now, 'total', ARGV[2],
           'closed', ARGV[3], 'acc', 0, 'ok', 0, 'failed', 0, 'cancelled', 0, 'done', 0,
           'bytes', ARGV[5], 'digest', ARGV[8], 'writer', ARGV[6], 'writer_until', now + tonumber(ARGV[7]))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {1}
"""

# KEYS: tasks. ARGV: retention s, then (index, filename, pool g|e, dedup identity or '')
# quadruples. Writes each task's record (QUEUED, attempt 1 live) only where it is absent.
# Returns how many were written.
_RECORDS = _TASK + """
local written = 0
for k = 2, #ARGV, 4 do
  local i = ARGV[k]
  if redis.call('HEXISTS', KEYS[1], i .. ':st') == 0 then
    redis.call('HSET', KEYS[1], i .. ':st', QUEUED, i .. ':att', 1, i .. ':a:1', 1, i .. ':live', 1,
               i .. ':fn', ARGV[k + 1], i .. ':pl', ARGV[k + 2])
    if ARGV[k + 3] ~= '' then redis.call('HSET', KEYS[1], i .. ':dd', ARGV[k + 3]) end
    written = written + 1
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return written
"""

# KEYS: meta, events, tasks, stash. ARGV: writer token, accepted payload, retention s.
# Returns 1 committed now, 0 already committed, -1 the caller is no longer the writer,
# -2 the batch is gone (expired).
_COMMIT = _TASK + _SUMMARY + """
local m = redis.call('HMGET', KEYS[1], 'tenant', 'acc', 'writer')
if not m[1] then return -2 end
if m[2] == '1' then return 0 end
if m[3] ~= ARGV[1] then return -1 end
redis.call('XADD', KEYS[2], '*', 'k', 'accepted', 'd', ARGV[2])
redis.call('HSET', KEYS[1], 'acc', 1)
redis.call('HDEL', KEYS[1], 'writer', 'writer_until')
local stashed = redis.call('HGETALL', KEYS[4])
for k = 1, #stashed, 2 do
  local st = state(KEYS[3], stashed[k])
  redis.call('HINCRBY', KEYS[1], COUNTER[st], 1)
  redis.call('XADD', KEYS[2], '*', 'k', 'result', 'd', stashed[k + 1])
end
redis.call('DEL', KEYS[4])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
maybe_summary(KEYS[1], KEYS[2], KEYS[3], ARGV[3])
return 1
"""

# KEYS: meta, events, tasks, stash. ARGV: index, TaskAccepted payload, retention s.
# A session's task is accepted (its record and queue entry exist): logged once. Returns 1, or
# 0 when the session closed meanwhile (the task is then stopped without an event: it was never
# accepted), -2 when the batch is gone.
_ACCEPT_TASK = _TASK + _SUMMARY + """
local m = redis.call('HMGET', KEYS[1], 'tenant', 'closed')
if not m[1] then return -2 end
local i = ARGV[1]
if redis.call('HEXISTS', KEYS[3], i .. ':acc') == 1 then return 1 end
if m[2] ~= '0' then
  if not is_final(state(KEYS[3], i)) then redis.call('HSET', KEYS[3], i .. ':st', CANCELLED) end
  return 0
end
redis.call('HINCRBY', KEYS[1], 'total', 1)
redis.call('HSET', KEYS[3], i .. ':acc', 1)
redis.call('XADD', KEYS[2], '*', 'k', 'task_accepted', 'd', ARGV[2])
local r = redis.call('HGET', KEYS[4], i)
if r then
  redis.call('HDEL', KEYS[4], i)
  redis.call('HINCRBY', KEYS[1], COUNTER[state(KEYS[3], i)], 1)
  redis.call('XADD', KEYS[2], '*', 'k', 'result', 'd', r)
end
return 1
"""

# KEYS: tasks, meta, events, stash. ARGV: retention s, then per result: index, attempt ('*' =
# any), state, result payload, retire (0|1).
# For each result: 1 when it became the task's result, 0 when it was stale (task final, or the
# attempt no longer live), 2 when retire=1 and another attempt of the task is live: this
# attempt only stops being live (a raced attempt that failed while another still runs).
_FINISH = _TASK + _SUMMARY + """
local out = {}
for k = 2, #ARGV, 5 do
  local i, attempt, payload = ARGV[k], ARGV[k + 1], ARGV[k + 3]
  local new = tonumber(ARGV[k + 2])
  if not is_final(new) then return redis.error_reply('FINISH: state ' .. ARGV[k + 2] .. ' is not final') end
  local st = state(KEYS[1], i)
  local won = 0
  if st >= 0 and not is_final(st) and (attempt == '*' or live(KEYS[1], i, attempt)) then
    if ARGV[k + 4] == '1' and others_live(KEYS[1], i, attempt) then
      retire(KEYS[1], i, attempt)
      won = 2
    else
      redis.call('HSET', KEYS[1], i .. ':st', new)
      if redis.call('HEXISTS', KEYS[1], i .. ':dd') == 1 then redis.call('HSET', KEYS[1], i .. ':res', payload) end
      record(KEYS[2], KEYS[3], KEYS[1], KEYS[4], i, new, payload, ARGV[1])
      won = 1
    end
  end
  out[#out + 1] = won
end
return out
"""

# KEYS: tasks. ARGV: per attempt: index, attempt, queue entry id. May each entry run its
# attempt? Only if the task is not final, the attempt is live, and no other entry started it
# (a duplicate entry left by a crash between a requeue's steps). Marks the task RUNNING.
# For each: 1 to go ahead, 0 to drop the entry.
_START = _TASK + """
local out = {}
for k = 1, #ARGV, 3 do
  local i, n, eid = ARGV[k], ARGV[k + 1], ARGV[k + 2]
  local st = state(KEYS[1], i)
  local ok = 0
  if st >= 0 and not is_final(st) and live(KEYS[1], i, n) then
    local run = redis.call('HGET', KEYS[1], i .. ':run:' .. n)
    if not run or run == eid then
      if not run and redis.call('HGET', KEYS[1], i .. ':a:' .. n) == 'h' then
        redis.call('HSET', KEYS[1], i .. ':a:' .. n, 1)
        redis.call('HINCRBY', KEYS[1], i .. ':live', 1)
      end
      redis.call('HSET', KEYS[1], i .. ':run:' .. n, eid, i .. ':st', RUNNING)
      ok = 1
    end
  end
  out[#out + 1] = ok
end
return out
"""

# KEYS: tasks. ARGV: per attempt: index, old attempt k, keep k live (0|1: a hedge), retire
# (0|1), the queue entry id of k.
# For each: makes attempt att+1 live and returns its number; asked again for the same k (a
# retry, or the gateway that claimed k's entry after a crash) it returns the same number.
# 0 when the task is final, k is no longer live (someone else moved it on) or another entry
# than this one started k (this one is a duplicate); -1 when retire=1 and another attempt is
# live (k only stops being live: the task goes on through the other one). A hedge (keep=1) is
# live only once its entry starts (START), so a hedge whose entry was never pushed holds
# nothing up.
_NEXT = _TASK + """
local function next_attempt(i, k, keep, retiring, eid)
  local st = state(KEYS[1], i)
  if st < 0 or is_final(st) then return 0 end
  local run = redis.call('HGET', KEYS[1], i .. ':run:' .. k)
  if run and run ~= eid then return 0 end
  local mark = i .. (keep and ':hx:' or ':nx:') .. k
  local made = redis.call('HGET', KEYS[1], mark)
  if made then return tonumber(made) end
  if not live(KEYS[1], i, k) then return 0 end
  if retiring and others_live(KEYS[1], i, k) then
    retire(KEYS[1], i, k)
    return -1
  end
  if not keep then
    retire(KEYS[1], i, k)
    redis.call('HSET', KEYS[1], i .. ':st', QUEUED)
  end
  local n = redis.call('HINCRBY', KEYS[1], i .. ':att', 1)
  if keep then
    redis.call('HSET', KEYS[1], i .. ':a:' .. n, 'h', mark, n)
  else
    redis.call('HSET', KEYS[1], i .. ':a:' .. n, 1, mark, n)
    redis.call('HINCRBY', KEYS[1], i .. ':live', 1)
  end
  return n
end
local out = {}
for k = 1, #ARGV, 5 do
  out[#out + 1] = next_attempt(ARGV[k], ARGV[k + 1], ARGV[k + 2] == '1', ARGV[k + 3] == '1', ARGV[k + 4])
end
return out
"""

# KEYS: meta, events, tasks, stash. ARGV: retention s. No more tasks can be added.
_CLOSE = _TASK + _SUMMARY + """
if not redis.call('HGET', KEYS[1], 'tenant') then return 0 end
redis.call('HSET', KEYS[1], 'closed', 1)
maybe_summary(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
return 1
"""

# KEYS: meta, events, tasks, stash. ARGV: retention s, then one CANCELLED result payload per
# task index 0..n-1. Closes the batch and makes every unfinished task CANCELLED, atomically.
# Returns how many it cancelled of each pool: {generate, enhance}.
_CANCEL = _TASK + _SUMMARY + """
if not redis.call('HGET', KEYS[1], 'tenant') then return 0 end
redis.call('HSET', KEYS[1], 'closed', 1)
local cancelled = {0, 0}
for k = 2, #ARGV do
  local i = tostring(k - 2)
  local st = state(KEYS[3], i)
  if st >= 0 and not is_final(st) then
    redis.call('HSET', KEYS[3], i .. ':st', CANCELLED)
    if redis.call('HEXISTS', KEYS[3], i .. ':dd') == 1 then redis.call('HSET', KEYS[3], i .. ':res', ARGV[k]) end
    record(KEYS[1], KEYS[2], KEYS[3], KEYS[4], i, CANCELLED, ARGV[k], ARGV[1])
    local p = redis.call('HGET', KEYS[3], i .. ':pl') == 'e' and 2 or 1
    cancelled[p] = cancelled[p] + 1
  end
end
maybe_summary(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
return cancelled
"""

# Script names as the fault-injection sweep labels them (tests/faults).
SCRIPTS = {"CREATE": _CREATE, "RECORDS": _RECORDS, "COMMIT": _COMMIT, "ACCEPT_TASK": _ACCEPT_TASK,
           "FINISH": _FINISH, "START": _START, "NEXT": _NEXT, "CLOSE": _CLOSE, "CANCEL": _CANCEL}


def task_id(batch_id: str, index: int) -> str:
    return f"{batch_id}-{index}"


# Batch ids are the tenant's own: each tenant has a namespace, so a batch id another tenant
# chose is simply a new batch here (a caller can't learn that an id exists elsewhere). Inside
# the mesh a batch is named by its *ref*, `<tenant tag>.<batch id>`: Redis keys, queue entries,
# task and attempt ids, storage keys. Callers see their own batch id in events and statuses.
_TAG_CHARS = 10
REF = re.compile(r"\A[0-9a-f]{%d}\.(.+)\Z" % _TAG_CHARS, re.S)


def tenant_tag(tenant: str) -> str:
    return hashlib.sha256(tenant.encode()).hexdigest()[:_TAG_CHARS]


def batch_ref(tenant: str, batch_id: str) -> str:
    """The mesh's name for `tenant`'s batch `batch_id`."""
    return f"{tenant_tag(tenant)}.{batch_id}"


def public_id(ref: str) -> str:
    """The batch id its tenant knows, from a ref (a string that is not a ref is returned as is)."""
    m = REF.match(ref)
    return m.group(1) if m else ref


def parse_task_id(tid: str) -> tuple[str, int]:
    batch_id, _, index = tid.rpartition("-")
    return batch_id, int(index)


class BadCursor(ValueError):
    """A cursor that is malformed or beyond the batch's last event."""


@dataclass(frozen=True)
class NewTask:
    """A task record to write when a batch is accepted."""

    index: int
    output_filename: str
    pool: str = "generate"
    dedup: str = ""


@dataclass(frozen=True)
class Reservation:
    """What CREATE said: `write` (this caller writes the batch: created or taken over),
    `accepted` (nothing to do), `busy` (another writer is at work, ask again after
    `wait_ms`), `foreign` (another tenant's id) or `mismatch` (the id was used for other tasks)."""

    outcome: str
    wait_ms: int = 0


_RESERVATIONS = {1: "write", 2: "write", 3: "busy", 0: "accepted", -1: "foreign", -2: "mismatch"}


@dataclass(frozen=True)
class BatchMeta:
    batch_id: str
    tenant: str
    total: int
    closed: bool
    done: bool
    accepted: bool
    created_ms: int


class BatchStore:
    """Reads and writes batches. Every method is a few round trips, whatever the batch size.

    Redis errors propagate (redis.exceptions.ConnectionError/TimeoutError): the servicer turns
    them into UNAVAILABLE, the dispatcher retries; every write here is idempotent or fenced, so
    a call whose reply was lost can be made again.
    """

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "im", retention: float = 86400,
                 writer_ttl: float = 30.0) -> None:
        self.r = redis
        self.prefix = prefix
        self.retention = int(retention)
        self.writer_ttl_ms = int(writer_ttl * 1000)
        self.scripts = Scripts(redis, SCRIPTS)

    # -- key names ---------------------------------------------------------------------------
    def meta_key(self, b: str) -> str:
        return f"{self.prefix}:{{{b}}}:meta"

    def events_key(self, b: str) -> str:
        return f"{self.prefix}:{{{b}}}:ev"

    def tasks_key(self, b: str) -> str:
        return f"{self.prefix}:{{{b}}}:tasks"

    def stash_key(self, b: str) -> str:
        return f"{self.prefix}:{{{b}}}:stash"

    def creds_key(self, b: str) -> str:
        return f"{self.prefix}:{{{b}}}:cred"

    def tenant_key(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{{{tenant}}}:open"

    def _four(self, b: str) -> list[str]:
        return [self.meta_key(b), self.events_key(b), self.tasks_key(b), self.stash_key(b)]

    # -- accepting ---------------------------------------------------------------------------
    async def reserve(self, batch_id: str, tenant: str, total: int, *, writer: str, digest: str = "",
                      input_bytes: int = 0, session: bool = False) -> Reservation:
        """CREATE: see the module docstring. A new batch is registered as the tenant's."""
        reply = await self.scripts.one(
            "CREATE", [self.meta_key(batch_id)],
            [tenant, total, 0 if session else 1, self.retention, input_bytes, writer,
             self.writer_ttl_ms, digest, "session" if session else "batch"])
        code = int(reply[0])
        if code == 1:
            pipe = self.r.pipeline(transaction=False)
            pipe.sadd(self.tenant_key(tenant), batch_id)
            pipe.expire(self.tenant_key(tenant), self.retention)
            await pipe.execute()
        return Reservation(_RESERVATIONS[code], int(reply[1]) if len(reply) > 1 else 0)

    async def write_records(self, batch_id: str, tasks: Iterable[NewTask], *,
                            sealed_tokens: dict[str, bytes] | None = None) -> None:
        """RECORDS: task records where absent (chunks of 500 tasks), and the sealed tokens."""
        if sealed_tokens:
            pipe = self.r.pipeline(transaction=False)
            pipe.hset(self.creds_key(batch_id), mapping=sealed_tokens)
            pipe.expire(self.creds_key(batch_id), self.retention)
            await pipe.execute()
        calls = []
        args: list[str | int] = []
        for t in tasks:
            args += [t.index, t.output_filename, t.pool[0], t.dedup]
            if len(args) >= 2000:
                calls.append(("RECORDS", [self.tasks_key(batch_id)], [self.retention, *args]))
                args = []
        if args:
            calls.append(("RECORDS", [self.tasks_key(batch_id)], [self.retention, *args]))
        await self.scripts.run(calls)

    async def commit(self, batch_id: str, writer: str, accepted: pb.Accepted) -> int:
        """COMMIT: 1 committed, 0 already, -1 no longer the writer, -2 the batch is gone."""
        return int(await self.scripts.one("COMMIT", self._four(batch_id),
                                          [writer, accepted.SerializeToString(), self.retention]))

    async def accept_task(self, batch_id: str, index: int) -> int:
        """ACCEPT_TASK (sessions): 1 accepted, 0 the session closed meanwhile, -2 gone."""
        payload = pb.TaskAccepted(task_index=index, task_id=task_id(batch_id, index)).SerializeToString()
        return int(await self.scripts.one("ACCEPT_TASK", self._four(batch_id), [index, payload, self.retention]))

    async def close(self, batch_id: str) -> None:
        await self.scripts.one("CLOSE", self._four(batch_id), [self.retention])

    async def cancel(self, batch_id: str) -> dict[str, int]:
        """Close the batch and cancel every unfinished task at once; returns how many of each
        pool it cancelled."""
        await self.close(batch_id)
        meta = await self.meta(batch_id)
        if meta is None:
            return {}
        payloads = [pb.TaskResult(task_index=i, task_id=task_id(batch_id, i), state=pb.CANCELLED,
                                  error=pb.TaskError(code="CANCELLED", message="the batch was cancelled"))
                    .SerializeToString() for i in range(meta.total)]
        reply = await self.scripts.one("CANCEL", self._four(batch_id), [self.retention, *payloads])
        if not isinstance(reply, list):
            return {}
        return {"generate": int(reply[0]), "enhance": int(reply[1])}

    # -- running -----------------------------------------------------------------------------
    async def start_many(self, attempts: list[tuple[str, int, int, str]]) -> list[bool]:
        """START for each (batch_id, index, attempt, entry id): may it run? One script call per
        batch, all in one round trip."""
        groups = _by_batch(attempts)
        replies = await self.scripts.run(
            [("START", [self.tasks_key(b)], [x for _, (_, i, a, eid) in rows for x in (i, a, eid)])
             for b, rows in groups.items()])
        return _scatter(len(attempts), groups, replies, bool)

    async def finish_many(self, results: list[tuple[str, int, str, pb.TaskResult, bool]]) -> list[int]:
        """FINISH for each (batch_id, index, attempt or '*', result, retire): 1 won, 0 stale,
        2 retired (another attempt lives on). One script call per batch, one round trip."""
        groups = _by_batch(results)
        calls = []
        for b, rows in groups.items():
            args: list[object] = [self.retention]
            for _, (_, i, attempt, result, retire) in rows:
                args += [i, attempt, int(result.state), result.SerializeToString(), int(retire)]
            calls.append(("FINISH", [self.tasks_key(b), self.meta_key(b), self.events_key(b), self.stash_key(b)], args))
        return _scatter(len(results), groups, await self.scripts.run(calls), int)

    async def next_attempts(self, attempts: list[tuple[str, int, int, bool, bool, str]]) -> list[int]:
        """NEXT for each (batch_id, index, old attempt, keep old live, retire, old entry id): the
        new attempt number (the same one if asked again), 0 stale, -1 retired."""
        groups = _by_batch(attempts)
        replies = await self.scripts.run(
            [("NEXT", [self.tasks_key(b)],
              [x for _, (_, i, a, keep, retire, eid) in rows for x in (i, a, int(keep), int(retire), eid)])
             for b, rows in groups.items()])
        return _scatter(len(attempts), groups, replies, int)

    async def final_result(self, batch_id: str, index: int) -> pb.TaskResult | None:
        """The final result kept for a deduplication leader, or None (not final, not kept)."""
        raw = await self.r.hget(self.tasks_key(batch_id), f"{index}:res")
        return pb.TaskResult.FromString(raw) if raw is not None else None

    async def sealed_tokens(self, batch_id: str) -> dict[str, bytes]:
        raw = await self.r.hgetall(self.creds_key(batch_id))
        return {k.decode(): v for k, v in raw.items()}

    # -- backpressure ------------------------------------------------------------------------
    async def tenant_backlog(self, tenant: str) -> tuple[int, int]:
        """(unfinished tasks, input bytes) of the tenant's open batches; forgets finished ones."""
        batch_ids = [b.decode() for b in await self.r.smembers(self.tenant_key(tenant))]
        if not batch_ids:
            return 0, 0
        pipe = self.r.pipeline(transaction=False)
        for b in batch_ids:
            pipe.hmget(self.meta_key(b), "total", "ok", "failed", "cancelled", "done", "bytes")
        tasks = size = 0
        finished = []
        for b, row in zip(batch_ids, await pipe.execute()):
            if row[0] is None or row[4] == b"1":
                finished.append(b)
                continue
            total, ok, failed, cancelled = (int(x or 0) for x in row[:4])
            tasks += total - ok - failed - cancelled
            size += int(row[5] or 0)
        if finished:
            await self.r.srem(self.tenant_key(tenant), *finished)
        return tasks, size

    # -- reading -----------------------------------------------------------------------------
    async def meta(self, batch_id: str) -> BatchMeta | None:
        m = await self.r.hgetall(self.meta_key(batch_id))
        if not m or b"tenant" not in m:
            return None
        g = {k.decode(): v.decode() for k, v in m.items()}
        return BatchMeta(batch_id=batch_id, tenant=g["tenant"], total=int(g["total"]),
                         closed=g.get("closed") == "1", done=g.get("done") == "1",
                         accepted=g.get("acc") == "1", created_ms=int(g["created_ms"]))

    async def status(self, batch_id: str) -> pb.BatchStatus | None:
        meta = await self.meta(batch_id)
        if meta is None:
            return None
        names = [f"{i}:{f}" for i in range(meta.total) for f in ("st", "att", "fn")]
        values = await self.r.hmget(self.tasks_key(batch_id), names) if names else []
        rows = [values[k:k + 3] for k in range(0, len(values), 3)]
        status = pb.BatchStatus(batch_id=batch_id, total=meta.total, done=meta.done, closed=meta.closed)
        counters = {pb.QUEUED: "queued", pb.RUNNING: "running", pb.SUCCEEDED: "succeeded",
                    pb.FAILED: "failed", pb.CANCELLED: "cancelled"}
        for i, (st, att, fn) in enumerate(rows):
            state = int(st) if st is not None else pb.TASK_STATE_UNSPECIFIED
            status.tasks.add(task_index=i, task_id=task_id(batch_id, i), state=state,
                             attempts=int(att or 0), output_filename=(fn or b"").decode())
            if state in counters:
                setattr(status, counters[state], getattr(status, counters[state]) + 1)
        return status

    async def check_cursor(self, batch_id: str, after: str) -> bool:
        """Raises BadCursor for a malformed cursor, or one beyond the batch's last event (a
        cursor this batch never issued): both are answered at once, never waited on. True when
        `after` is the summary's cursor: nothing more will come."""
        if not after:
            return False
        check_cursor_format(after)
        last = await self.r.xrevrange(self.events_key(batch_id), count=1)
        return judge_cursor(after, last[0] if last else None)


def _by_batch(rows: list[tuple]) -> dict[str, list[tuple[int, tuple]]]:
    """Rows grouped by their first field (the batch id), each with its position in `rows`."""
    groups: dict[str, list[tuple[int, tuple]]] = {}
    for k, row in enumerate(rows):
        groups.setdefault(row[0], []).append((k, row))
    return groups


def _scatter(n: int, groups: dict[str, list[tuple[int, tuple]]], replies: list, convert) -> list:
    """The per-batch replies put back in the order of the rows they answer."""
    out: list = [None] * n
    for rows, reply in zip(groups.values(), replies):
        for (k, _), value in zip(rows, reply):
            out[k] = convert(value)
    return out


def check_cursor_format(after: str) -> None:
    """Raises BadCursor unless `after` looks like a cursor."""
    if not CURSOR.match(after):
        raise BadCursor(f"after_cursor: {after!r} is not a cursor (they look like 1700000000000-0)")


def judge_cursor(after: str, last: tuple[bytes, dict[bytes, bytes]] | None) -> bool:
    """`after` (a well-formed cursor, or empty) against the log's last entry (None: no log yet).
    Raises BadCursor for a cursor beyond it; True when `after` is the summary's cursor."""
    if not after or last is None:
        return False
    last_id = last[0].decode()
    if cursor_key(after) > cursor_key(last_id):
        raise BadCursor(f"after_cursor: {after} is beyond the batch's last event ({last_id})")
    return after == last_id and last[1].get(b"k") == b"summary"


def cursor_key(cursor: str | bytes) -> tuple[int, int]:
    """A cursor (an entry id, `ms-seq`) as a tuple that orders like the log."""
    ms, _, seq = (cursor.decode() if isinstance(cursor, bytes) else cursor).partition("-")
    return int(ms), int(seq or 0)


def decode_event(batch_id: str, cursor: str, fields: dict[bytes, bytes]) -> pb.BatchEvent:
    """A stored event parsed into its message: the reference form of `encode_event` (which the
    gateway sends instead)."""
    kind = fields[b"k"].decode()
    event = pb.BatchEvent(batch_id=batch_id, cursor=cursor)
    if kind == "accepted":
        event.accepted.ParseFromString(fields[b"d"])
    elif kind == "task_accepted":
        event.task_accepted.ParseFromString(fields[b"d"])
    elif kind == "result":
        event.result.ParseFromString(fields[b"d"])
    elif kind == "summary":
        event.summary.total = int(fields[b"total"])
        event.summary.succeeded = int(fields[b"ok"])
        event.summary.failed = int(fields[b"failed"])
        event.summary.cancelled = int(fields[b"cancelled"])
        event.summary.duration_ms = int(fields[b"duration_ms"])
    return event


# -- the stored event as sent: protobuf wire format, written by hand -----------------------------
# BatchEvent: batch_id = 1, cursor = 2 (strings), then one of accepted = 3, task_accepted = 4,
# result = 5, summary = 6 (messages). A field is its tag ((number << 3) | wire type; 2 is
# length-delimited, 0 a varint), then a varint length and the bytes. The stored `d` is the
# serialized oneof message, so it is copied as it is, never parsed.
_EMBEDDED = {b"accepted": b"\x1a", b"task_accepted": b"\x22", b"result": b"\x2a"}
_SUMMARY_TAG = b"\x32"
# BatchSummary: total = 1, succeeded = 2, failed = 3, cancelled = 4 (int32), duration_ms = 5
# (int64), all varints; the stored field names are the summary script's (see _SUMMARY).
_SUMMARY_FIELDS = ((b"total", b"\x08"), (b"ok", b"\x10"), (b"failed", b"\x18"), (b"cancelled", b"\x20"),
                   (b"duration_ms", b"\x28"))


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return bytes((n,))
    if n < 0:
        n += 1 << 64  # negative ints are sign-extended to 64 bits, as protobuf does
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def event_head(batch_id: str) -> bytes:
    """The encoded `batch_id` field, the same for every event of the batch (see encode_event)."""
    raw = batch_id.encode()
    return b"\x0a" + _varint(len(raw)) + raw if raw else b""


def encode_event(head: bytes, cursor: bytes, fields: dict[bytes, bytes]) -> bytes:
    """The serialized `BatchEvent` of a stored event, built from its fields without parsing
    its payload: `head` is `event_head(batch_id)`, `cursor` the entry id. The same message as
    `decode_event(...)`; the same bytes as its serialization whenever re-serialising the
    payload gives the payload back (always, with deterministic serialization on both sides:
    only map entries may come out in another order). An unknown kind is an event with no
    oneof set, as decode_event makes it. Raises KeyError/ValueError for a malformed entry."""
    parts = [head, b"\x12", _varint(len(cursor)), cursor]
    kind = fields[b"k"]
    tag = _EMBEDDED.get(kind)
    if tag is not None:
        d = fields[b"d"]
        parts += (tag, _varint(len(d)), d)
    elif kind == b"summary":
        body = b"".join(t + _varint(v) for t, v in ((t, int(fields[name])) for name, t in _SUMMARY_FIELDS) if v)
        parts += (_SUMMARY_TAG, _varint(len(body)), body)
    return b"".join(parts)


def now_ms() -> int:
    return int(time.time() * 1000)
