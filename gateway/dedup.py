"""Identical generate tasks in flight at once run once; every caller gets the result.

Two tasks are identical when they come from the same tenant with the same generate spec and
the same `idempotency_key` (or, with the key `content`, the same spec alone: content-addressed).
The first becomes the *leader* and runs; later ones become *followers* and are not queued.
When the leader's result is recorded, each follower gets a copy marked `deduplicated`.

    im:dd:{<h>}:lead       string  the leader's task id (while it runs)
    im:dd:{<h>}:followers  list    follower task ids
    im:dd:{<h>}:done       string  the leader's result, for followers that arrive just after it

All three keys share one hash tag, so joining and finishing are single scripts: a follower can
never register after the leader's followers were taken. A cancelled leader does not cancel its
followers: they are handed back to run on their own.

What can go wrong: the follower copies are written after the leader's result, in other batches
(other slots), so a gateway crash between the two leaves followers queued without an entry.
`ttl` bounds the damage: followers of a leader that never finishes can't wait forever, because
the lead key expires and the housekeeping of a later identical task starts over.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import redis.asyncio as aioredis

from imagemesh import filenames
from imagemesh.v1 import imagemesh_pb2 as pb

CONTENT = "content"

# KEYS: lead, followers, done. ARGV: task id, ttl s, follower record.
# Returns {"lead"} when this task runs, {"follow"} when it waits for the leader, or
# {"done", result} when the leader just finished.
_JOIN = """
local done = redis.call('GET', KEYS[3])
if done then return {'done', done} end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return {'lead'} end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {'follow'}
"""

# KEYS: lead, followers, done. ARGV: leader task id, result, keep s (0: nothing to keep).
# Returns the follower records, or nothing when the caller is not the leader.
_FINISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {} end
redis.call('DEL', KEYS[1])
local followers = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
if tonumber(ARGV[3]) > 0 then redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3]) end
return followers
"""


def dedup_hash(tenant: str, task: pb.Task) -> str | None:
    """The identity of a generate task for deduplication, or None when it opts out."""
    if not task.idempotency_key or not task.HasField("generate"):
        return None
    spec = task.generate.SerializeToString(deterministic=True)
    key = "" if task.idempotency_key == CONTENT else task.idempotency_key
    then = task.then_enhance.SerializeToString(deterministic=True) if task.HasField("then_enhance") else b""
    return hashlib.sha256(b"\0".join([tenant.encode(), key.encode(), spec, then])).hexdigest()[:32]


class Dedup:
    def __init__(self, redis: aioredis.Redis, *, prefix: str = "im", ttl: float = 3600) -> None:
        self.r = redis
        self.prefix = prefix
        self.ttl = int(ttl)
        self._join = redis.register_script(_JOIN)
        self._finish = redis.register_script(_FINISH)

    def _keys(self, h: str) -> list[str]:
        base = f"{self.prefix}:dd:{{{h}}}"
        return [f"{base}:lead", f"{base}:followers", f"{base}:done"]

    async def join(self, h: str, follower: "Follower") -> tuple[str, pb.TaskResult | None]:
        """("lead", None), ("follow", None) or ("done", the leader's result)."""
        reply = await self._join(keys=self._keys(h), args=[follower.task_id, self.ttl, follower.dump()])
        kind = reply[0].decode()
        return kind, (pb.TaskResult.FromString(reply[1]) if kind == "done" else None)

    async def finish(self, h: str, leader_task_id: str, result: pb.TaskResult) -> list["Follower"]:
        """The leader is done: the followers that waited for it."""
        keep = 5 if result.state == pb.SUCCEEDED else 0
        records = await self._finish(keys=self._keys(h), args=[leader_task_id, result.SerializeToString(), keep])
        return [Follower.load(r) for r in records]


@dataclass(frozen=True)
class Follower:
    """What a follower needs to get its copy, or to be queued on its own after all."""

    batch_id: str
    index: int
    task_id: str
    output_filename: str
    labels: dict[str, str]
    queue: str
    entry: dict[str, str | int]

    def dump(self) -> str:
        return json.dumps(self.__dict__)

    @staticmethod
    def load(raw: bytes) -> "Follower":
        return Follower(**json.loads(raw))

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
