"""Batches in Redis: task records, the per-batch event log, counters and the summary.

All of a batch's keys share the hash tag `{<batch_id>}`, so every script below touches one slot
and works on Redis Cluster:

    im:{B}:meta     hash    tenant, created_ms, total, closed, ok, failed, cancelled, done, enq, bytes
    im:{B}:tasks    hash    per task i: `i:st` (TaskState), `i:att` (newest attempt), `i:a:<n>`
                            (attempt n is live), `i:live` (how many are), `i:fn` (output filename)
    im:{B}:ev       stream  the batch's events; entry ids are the clients' cursors
    im:{B}:cred     hash    provider -> sealed caller token (see imagemesh.credentials)

One hash for all of a batch's tasks (not a key per task) keeps submission at one command per
batch and memory small with 100 000 queued tasks. Every key expires `retention` seconds after
the batch was created or finished.

Exactly-once results (invariant 4) rest on `FINISH`: it moves a task to a final state only if
the task is not final yet and the reporting attempt is still live, and appends the result event
in the same script. Any number of stale, duplicate or late reports can arrive; one wins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from imagemesh.v1 import imagemesh_pb2 as pb

FINAL_STATES = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)

# KEYS[1] meta, KEYS[2] events. ARGV: tenant, total, closed (0|1), retention s, accepted payload,
# input bytes. Returns 1 when created, 0 when the batch already existed (for the same tenant),
# -1 when the id belongs to another tenant.
_CREATE = """
local tenant = redis.call('HGET', KEYS[1], 'tenant')
if tenant then
  if tenant ~= ARGV[1] then return -1 end
  return 0
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', KEYS[1], 'tenant', ARGV[1], 'created_ms', now, 'total', ARGV[2],
           'closed', ARGV[3], 'ok', 0, 'failed', 0, 'cancelled', 0, 'done', 0, 'bytes', ARGV[6])
redis.call('XADD', KEYS[2], '*', 'k', 'accepted', 'd', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""

# Shared head of the task scripts: the task's state, and whether an attempt is live.
_TASK = """
local function state(tasks, i)
  return tonumber(redis.call('HGET', tasks, i .. ':st') or '-1')
end
local function live(tasks, i, attempt)
  return redis.call('HEXISTS', tasks, i .. ':a:' .. attempt) == 1
end
"""

# Shared tail of FINISH and CLOSE: append the summary once every task is final and no more can
# be added, and keep the batch `retention` seconds from now.
_SUMMARY = """
local function maybe_summary(meta, events, tasks, retention)
  local m = redis.call('HMGET', meta, 'total', 'ok', 'failed', 'cancelled', 'closed', 'created_ms', 'done')
  local total, ok, failed, cancelled = tonumber(m[1]), tonumber(m[2]), tonumber(m[3]), tonumber(m[4])
  if m[5] ~= '1' or m[7] == '1' or ok + failed + cancelled < total then return end
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  redis.call('HSET', meta, 'done', 1, 'finished_ms', now)
  redis.call('XADD', events, '*', 'k', 'summary', 'total', total, 'ok', ok, 'failed', failed,
             'cancelled', cancelled, 'duration_ms', now - tonumber(m[6]))
  redis.call('EXPIRE', meta, retention)
  redis.call('EXPIRE', events, retention)
  redis.call('EXPIRE', tasks, retention)
end
"""

# KEYS[1] tasks, KEYS[2] meta, KEYS[3] events. ARGV: index, attempt ('*' = any live or not),
# state, result payload, retention s. Returns 1 when this report became the task's result, 0
# when it was stale (task already final, or the attempt no longer live).
_FINISH = _TASK + _SUMMARY + """
local i = ARGV[1]
local st = state(KEYS[1], i)
if st < 0 or st >= 3 then return 0 end
if ARGV[2] ~= '*' and not live(KEYS[1], i, ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], i .. ':st', ARGV[3])
local counter = ({['3'] = 'ok', ['4'] = 'failed', ['5'] = 'cancelled'})[ARGV[3]]
redis.call('HINCRBY', KEYS[2], counter, 1)
redis.call('XADD', KEYS[3], '*', 'k', 'result', 'd', ARGV[4])
maybe_summary(KEYS[2], KEYS[3], KEYS[1], ARGV[5])
return 1
"""

# KEYS[1] meta, KEYS[2] events, KEYS[3] tasks. ARGV: retention s. No more tasks can be added.
_CLOSE = _SUMMARY + """
if not redis.call('HGET', KEYS[1], 'tenant') then return 0 end
redis.call('HSET', KEYS[1], 'closed', 1)
maybe_summary(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
return 1
"""

# KEYS[1] tasks. ARGV: index, attempt. Marks the task RUNNING if that attempt is still live.
# Returns 1 to go ahead, 0 when the task is final or the attempt stale (drop the entry).
_START = _TASK + """
local st = state(KEYS[1], ARGV[1])
if st < 0 or st >= 3 or not live(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1] .. ':st', 2)
return 1
"""

# KEYS[1] tasks. ARGV: index, old attempt, keep old live (0|1). Makes attempt att+1 live and
# returns its number, or 0 when the task is final or the old attempt is no longer live (someone
# else already moved it on).
_NEXT_ATTEMPT = _TASK + """
local i = ARGV[1]
local st = state(KEYS[1], i)
if st < 0 or st >= 3 or not live(KEYS[1], i, ARGV[2]) then return 0 end
if ARGV[3] ~= '1' then
  redis.call('HDEL', KEYS[1], i .. ':a:' .. ARGV[2])
  redis.call('HINCRBY', KEYS[1], i .. ':live', -1)
end
local n = redis.call('HINCRBY', KEYS[1], i .. ':att', 1)
redis.call('HSET', KEYS[1], i .. ':a:' .. n, 1, i .. ':st', 1)
redis.call('HINCRBY', KEYS[1], i .. ':live', 1)
return n
"""

# KEYS[1] tasks. ARGV: index, attempt. A raced attempt failed: it stops being live. Returns how
# many attempts of the task are still live (0: this failure is the task's result), -1 if final.
_RETIRE = _TASK + """
local i = ARGV[1]
local st = state(KEYS[1], i)
if st < 0 or st >= 3 then return -1 end
if redis.call('HDEL', KEYS[1], i .. ':a:' .. ARGV[2]) == 1 then
  return redis.call('HINCRBY', KEYS[1], i .. ':live', -1)
end
return tonumber(redis.call('HGET', KEYS[1], i .. ':live') or '0')
"""

# KEYS[1] meta, KEYS[2] events, KEYS[3] tasks. ARGV: TaskAccepted payload, field/value pairs of
# the task's record... Adds one task to an open (Stream) batch; 0 when the batch is closed.
_ADD_TASK = """
if redis.call('HGET', KEYS[1], 'closed') ~= '0' then return 0 end
redis.call('HINCRBY', KEYS[1], 'total', 1)
redis.call('HSET', KEYS[3], unpack(ARGV, 2))
redis.call('XADD', KEYS[2], '*', 'k', 'task_accepted', 'd', ARGV[1])
return 1
"""


def task_id(batch_id: str, index: int) -> str:
    return f"{batch_id}-{index}"


def parse_task_id(tid: str) -> tuple[str, int]:
    batch_id, _, index = tid.rpartition("-")
    return batch_id, int(index)


@dataclass(frozen=True)
class NewTask:
    """A task record to write when a batch is accepted."""

    index: int
    pool: str
    output_filename: str


@dataclass(frozen=True)
class BatchMeta:
    batch_id: str
    tenant: str
    total: int
    closed: bool
    done: bool
    enqueued: bool
    created_ms: int


class BatchStore:
    """Reads and writes batches. Every method is a few round trips, whatever the batch size.

    Redis errors propagate (redis.exceptions.ConnectionError/TimeoutError): the servicer turns
    them into UNAVAILABLE; nothing here half-applies a change that a retry can't finish.
    """

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "im", retention: float = 86400) -> None:
        self.r = redis
        self.prefix = prefix
        self.retention = int(retention)
        self._create = redis.register_script(_CREATE)
        self._finish = redis.register_script(_FINISH)
        self._close = redis.register_script(_CLOSE)
        self._start = redis.register_script(_START)
        self._next = redis.register_script(_NEXT_ATTEMPT)
        self._add = redis.register_script(_ADD_TASK)
        self._retire = redis.register_script(_RETIRE)

    # -- key names ---------------------------------------------------------------------------
    def meta_key(self, b: str) -> str:
        return f"{self.prefix}:{{{b}}}:meta"

    def events_key(self, b: str) -> str:
        return f"{self.prefix}:{{{b}}}:ev"

    def tasks_key(self, b: str) -> str:
        return f"{self.prefix}:{{{b}}}:tasks"

    def creds_key(self, b: str) -> str:
        return f"{self.prefix}:{{{b}}}:cred"

    # -- creating ----------------------------------------------------------------------------
    async def create(self, batch_id: str, tenant: str, total: int, *, closed: bool,
                     accepted: pb.Accepted, input_bytes: int = 0) -> int:
        """1: created; 0: the tenant's batch with that id exists; -1: another tenant's id."""
        created = int(await self._create(
            keys=[self.meta_key(batch_id), self.events_key(batch_id)],
            args=[tenant, total, int(closed), self.retention, accepted.SerializeToString(), input_bytes]))
        if created == 1:
            pipe = self.r.pipeline(transaction=False)
            pipe.sadd(self.tenant_key(tenant), batch_id)
            pipe.expire(self.tenant_key(tenant), self.retention)
            await pipe.execute()
        return created

    def tenant_key(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{{{tenant}}}:open"

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

    async def write_tasks(self, batch_id: str, tasks: Iterable[NewTask], *,
                          sealed_tokens: dict[str, bytes] | None = None) -> None:
        """Task records (state QUEUED, attempt 1 live) and the batch's sealed tokens."""
        fields: dict[str, str | int] = {}
        for t in tasks:
            fields.update(self._task_fields(t))
        pipe = self.r.pipeline(transaction=False)
        if sealed_tokens:
            pipe.hset(self.creds_key(batch_id), mapping=sealed_tokens)
            pipe.expire(self.creds_key(batch_id), self.retention)
        names = list(fields)
        for start in range(0, len(names), 5000):  # bounded commands, whatever the batch size
            pipe.hset(self.tasks_key(batch_id), mapping={k: fields[k] for k in names[start:start + 5000]})
        pipe.expire(self.tasks_key(batch_id), self.retention)
        await pipe.execute()

    @staticmethod
    def _task_fields(t: NewTask) -> dict[str, str | int]:
        i = t.index
        return {f"{i}:st": pb.QUEUED, f"{i}:att": 1, f"{i}:a:1": 1, f"{i}:live": 1, f"{i}:fn": t.output_filename}

    async def add_task(self, batch_id: str, task: NewTask, *, sealed_tokens: dict[str, bytes] | None = None) -> bool:
        """Add a task to an open Stream batch; False when the batch is closed or unknown."""
        accepted = pb.TaskAccepted(task_index=task.index, task_id=task_id(batch_id, task.index))
        flat: list[str | int] = [x for kv in self._task_fields(task).items() for x in kv]
        pipe = self.r.pipeline(transaction=False)
        if sealed_tokens:
            pipe.hset(self.creds_key(batch_id), mapping=sealed_tokens)
            pipe.expire(self.creds_key(batch_id), self.retention)
        pipe.expire(self.tasks_key(batch_id), self.retention)
        await pipe.execute()
        ok = await self._add(
            keys=[self.meta_key(batch_id), self.events_key(batch_id), self.tasks_key(batch_id)],
            args=[accepted.SerializeToString(), *flat])
        return bool(ok)

    async def mark_enqueued(self, batch_id: str) -> None:
        await self.r.hset(self.meta_key(batch_id), "enq", 1)

    async def close(self, batch_id: str) -> None:
        await self._close(keys=[self.meta_key(batch_id), self.events_key(batch_id), self.tasks_key(batch_id)],
                          args=[self.retention])

    # -- running -----------------------------------------------------------------------------
    async def start_many(self, attempts: list[tuple[str, int, int]]) -> list[bool]:
        """For each (batch_id, index, attempt): may it run? Marks those RUNNING. One round trip."""
        if not attempts:
            return []
        pipe = self.r.pipeline(transaction=False)
        for b, i, a in attempts:
            await self._start(keys=[self.tasks_key(b)], args=[i, a], client=pipe)
        return [bool(x) for x in await pipe.execute()]

    async def finish_many(self, results: list[tuple[str, int, str, pb.TaskResult]]) -> list[bool]:
        """Record final results: (batch_id, index, attempt or '*', result). True where it won."""
        if not results:
            return []
        pipe = self.r.pipeline(transaction=False)
        for b, i, attempt, result in results:
            await self._finish(keys=[self.tasks_key(b), self.meta_key(b), self.events_key(b)],
                               args=[i, attempt, int(result.state), result.SerializeToString(), self.retention],
                               client=pipe)
        return [bool(x) for x in await pipe.execute()]

    async def next_attempts(self, attempts: list[tuple[str, int, int, bool]]) -> list[int]:
        """For each (batch_id, index, old attempt, keep old live): the new attempt number, or 0."""
        if not attempts:
            return []
        pipe = self.r.pipeline(transaction=False)
        for b, i, a, keep in attempts:
            await self._next(keys=[self.tasks_key(b)], args=[i, a, int(keep)], client=pipe)
        return [int(x) for x in await pipe.execute()]

    async def retire(self, batch_id: str, index: int, attempt: int) -> int:
        """A raced attempt failed: the number of attempts still live (-1: task already final)."""
        return int(await self._retire(keys=[self.tasks_key(batch_id)], args=[index, attempt]))

    async def sealed_tokens(self, batch_id: str) -> dict[str, bytes]:
        raw = await self.r.hgetall(self.creds_key(batch_id))
        return {k.decode(): v for k, v in raw.items()}

    # -- reading -----------------------------------------------------------------------------
    async def meta(self, batch_id: str) -> BatchMeta | None:
        m = await self.r.hgetall(self.meta_key(batch_id))
        if not m:
            return None
        g = {k.decode(): v.decode() for k, v in m.items()}
        return BatchMeta(batch_id=batch_id, tenant=g["tenant"], total=int(g["total"]),
                         closed=g.get("closed") == "1", done=g.get("done") == "1",
                         enqueued=g.get("enq") == "1", created_ms=int(g["created_ms"]))

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

    async def unfinished(self, batch_id: str) -> list[int]:
        meta = await self.meta(batch_id)
        if meta is None:
            return []
        names = [f"{i}:st" for i in range(meta.total)]
        states = await self.r.hmget(self.tasks_key(batch_id), names) if names else []
        return [i for i, st in enumerate(states) if st is not None and int(st) not in FINAL_STATES]

    async def events(self, batch_id: str, after: str = "", *, block_ms: int = 1000,
                     count: int = 500) -> AsyncIterator[pb.BatchEvent]:
        """Every event after cursor `after` (from the start if empty), then new ones as they come,
        until the summary. Stops with nothing if the batch does not exist."""
        key = self.events_key(batch_id)
        cursor = after or "0-0"
        while True:
            reply = await self.r.xread({key: cursor}, count=count, block=block_ms)
            if not reply:
                if not await self.r.exists(key):
                    return
                continue
            for entry_id, fields in reply[0][1]:
                cursor = entry_id.decode()
                event = decode_event(batch_id, cursor, fields)
                yield event
                if event.HasField("summary"):
                    return


def decode_event(batch_id: str, cursor: str, fields: dict[bytes, bytes]) -> pb.BatchEvent:
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
