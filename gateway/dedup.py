"""Identical generate tasks in flight at once run once; every caller gets the result.

Two tasks are identical when they come from the same tenant with the same generate spec and
the same `idempotency_key` (or, with the key `content`, the same spec alone: content-addressed).
The first becomes the *leader* and runs; later ones become *followers* and are not queued.
When the leader's result is recorded, each follower gets a copy marked `deduplicated`.

    im:dd:{<h>}:lead          string  the leader's task id (while it is not served)
    im:dd:{<h>}:followers     list    follower records; im:dd:{<h>}:members: their task ids
    im:dd:{<h>}:taken:<tid>   list    followers taken by leader <tid>, until all are served
    im:dd:{<h>}:done          string  the leader's result, for identical tasks arriving just after

All keys of one identity share a hash tag, so joining and taking are single scripts: a follower
can never register after the leader's followers were taken. JOIN is idempotent (a resubmitted
batch finds its tasks where they were).

Serving the followers is recoverable at every step. The leader's final result is kept in its
task record (gateway.batches, `i:res`); TAKE moves the followers to a list named after the
leader, and answers the same list again until CLEAR, so a gateway that dies after the leader's
FINISH, or half way through the copies, is finished by whoever next drops the leader's queue
entry (the claim path). A cancelled leader does not cancel its followers: they are queued to
run on their own. The lead key lives as long as a batch is kept (`ttl` = retention), however
long the leader waits in its queue.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import redis.asyncio as aioredis

from imagemesh import filenames
from imagemesh.v1 import imagemesh_pb2 as pb

from .entries import QueueEntry

CONTENT = "content"

# KEYS: lead, followers, done, members. ARGV: task id, ttl s, follower record.
# Returns {"lead"} when this task runs, {"follow"} when it waits for the leader, or
# {"done", result} when the leader just finished. Asked again, a task gets the same answer.
_JOIN = """
local lead = redis.call('GET', KEYS[1])
if lead == ARGV[1] then return {'lead'} end
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then return {'follow'} end
local done = redis.call('GET', KEYS[3])
if done then return {'done', done} end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return {'lead'} end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[4], ARGV[2])
return {'follow'}
"""

# KEYS: lead, followers, done, members, taken. ARGV: leader task id, result, keep s (0: none),
# ttl s.
# The leader is final: its followers move to `taken` (returned), later joiners see `done` or
# lead anew. Asked again before CLEAR, returns the same taken list.
_TAKE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[4])
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('RENAME', KEYS[2], KEYS[5])
    redis.call('EXPIRE', KEYS[5], ARGV[4])
  end
  if tonumber(ARGV[3]) > 0 then redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3]) end
end
return redis.call('LRANGE', KEYS[5], 0, -1)
"""

SCRIPTS = {"DEDUP_JOIN": _JOIN, "DEDUP_TAKE": _TAKE}


def dedup_hash(tenant: str, task: pb.Task) -> str | None:
    """The identity of a generate task for deduplication, or None when it opts out."""
    if not task.idempotency_key or not task.HasField("generate"):
        return None
    spec = task.generate.SerializeToString(deterministic=True)
    key = "" if task.idempotency_key == CONTENT else task.idempotency_key
    then = task.then_enhance.SerializeToString(deterministic=True) if task.HasField("then_enhance") else b""
    return hashlib.sha256(b"\0".join([tenant.encode(), key.encode(), spec, then])).hexdigest()[:32]


class Dedup:
    def __init__(self, redis: aioredis.Redis, *, prefix: str = "im", ttl: float = 86400) -> None:
        self.r = redis
        self.prefix = prefix
        self.ttl = int(ttl)
        self._join = redis.register_script(_JOIN)
        self._take = redis.register_script(_TAKE)

    def _keys(self, h: str) -> list[str]:
        base = f"{self.prefix}:dd:{{{h}}}"
        return [f"{base}:lead", f"{base}:followers", f"{base}:done", f"{base}:members"]

    async def join(self, h: str, follower: "Follower") -> tuple[str, pb.TaskResult | None]:
        """("lead", None), ("follow", None) or ("done", the leader's result)."""
        reply = await self._join(keys=self._keys(h), args=[follower.task_id, self.ttl, follower.dump()])
        kind = reply[0].decode()
        return kind, (pb.TaskResult.FromString(reply[1]) if kind == "done" else None)

    async def take(self, h: str, leader_task_id: str, result: pb.TaskResult) -> list["Follower"]:
        """The leader is final: the followers it must serve (the same ones until `clear`)."""
        keep = 5 if result.state == pb.SUCCEEDED else 0
        taken = f"{self.prefix}:dd:{{{h}}}:taken:{leader_task_id}"
        records = await self._take(keys=[*self._keys(h), taken],
                                   args=[leader_task_id, result.SerializeToString(), keep, self.ttl])
        return [Follower.load(r) for r in records]

    async def clear(self, h: str, leader_task_id: str) -> None:
        await self.r.delete(f"{self.prefix}:dd:{{{h}}}:taken:{leader_task_id}")


@dataclass(frozen=True)
class Follower:
    """What a follower needs to get its copy, or to be queued on its own after all."""

    batch_id: str
    index: int
    task_id: str
    output_filename: str
    labels: dict[str, str]
    queue: str
    entry: str  # its QueueEntry, JSON (gateway.entries)

    def dump(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @staticmethod
    def load(raw: bytes) -> "Follower":
        return Follower(**json.loads(raw))

    def queue_entry(self) -> QueueEntry:
        return QueueEntry.from_json(self.entry)

    def copy(self, result: pb.TaskResult) -> pb.TaskResult:
        """The leader's result as this task's own: index, id, filenames and labels."""
        out = pb.TaskResult()
        out.CopyFrom(result)
        out.task_index, out.task_id, out.output_filename = self.index, self.task_id, self.output_filename
        out.deduplicated = True
        out.labels.clear()
        out.labels.update(self.labels)
        for i, f in enumerate(out.files):
            f.filename = filenames.numbered(filenames.with_content_type(self.output_filename, f.content_type),
                                            i, len(out.files))
        return out
