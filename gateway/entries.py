"""The queue entry: one queued attempt of one task. This module is the only code that knows its
wire format (the short field names in the Redis stream), both ways.

    b  batch id            i  task index          a  attempt number
    t  accepted (unix ms)  s  the Task, serialized    n  tenant        r  priority class (i|b)
    p  provider index (generate: which provider of the task's fallback order)
    x  attempts so far that count against max_attempts (a stage move does not count)
    g  stage ("enhance": a generate task's then_enhance step)   c  what the stage carries
       (the generate step's TaskResult, serialized)
    d  deduplication identity (gateway.dedup), when other tasks may follow this one
    tr trace context (W3C traceparent), when the submitter was traced

Absent optional fields read back as their defaults, so entries written by an older gateway
still decode.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass

from .batches import task_id

_BYTES = ("task", "carry")


@dataclass(frozen=True)
class QueueEntry:
    batch_id: str
    index: int
    attempt: int
    accepted_ms: int
    task: bytes
    provider_index: int = 0
    tries: int = 1
    stage: str = ""
    carry: bytes = b""
    dedup: str = ""
    tenant: str = ""
    klass: str = "b"
    trace: str = ""
    # Where this entry was read from; empty until it was (set by TaskQueues).
    queue: str = ""
    entry_id: str = ""

    @property
    def task_id(self) -> str:
        return task_id(self.batch_id, self.index)

    @property
    def attempt_id(self) -> str:
        return f"{self.task_id}#{self.attempt}"

    @property
    def enqueued_ms(self) -> int:
        return int(self.entry_id.split("-", 1)[0]) if self.entry_id else self.accepted_ms

    def successor(self, attempt: int, *, provider_index: int | None = None, stage: str | None = None,
                  carry: bytes | None = None, counts: bool = True) -> "QueueEntry":
        """The entry of the attempt that replaces this one (not read from anywhere yet)."""
        return dataclasses.replace(
            self, attempt=attempt, queue="", entry_id="", tries=self.tries + (1 if counts else 0),
            provider_index=self.provider_index if provider_index is None else provider_index,
            stage=self.stage if stage is None else stage, carry=self.carry if carry is None else carry)

    # -- the stream format -------------------------------------------------------------------
    def encode(self) -> dict[str, bytes | str | int]:
        fields: dict[str, bytes | str | int] = {
            "b": self.batch_id, "i": self.index, "a": self.attempt, "t": self.accepted_ms,
            "s": self.task, "p": self.provider_index, "x": self.tries, "n": self.tenant, "r": self.klass}
        if self.stage:
            fields["g"] = self.stage
            fields["c"] = self.carry
        if self.dedup:
            fields["d"] = self.dedup
        if self.trace:
            fields["tr"] = self.trace
        return fields

    @staticmethod
    def decode(queue: str, entry_id: str, f: dict[bytes, bytes]) -> "QueueEntry":
        """Raises KeyError/ValueError for an entry that is not ours (the caller drops it)."""
        return QueueEntry(
            batch_id=f[b"b"].decode(), index=int(f[b"i"]), attempt=int(f[b"a"]), accepted_ms=int(f[b"t"]),
            task=f[b"s"], provider_index=int(f.get(b"p", 0)), tries=int(f.get(b"x", b"1")),
            stage=f.get(b"g", b"").decode(), carry=f.get(b"c", b""), dedup=f.get(b"d", b"").decode(),
            tenant=f.get(b"n", b"").decode(), klass=f.get(b"r", b"b").decode(), trace=f.get(b"tr", b"").decode(), queue=queue, entry_id=entry_id)

    # -- a JSON form, for records kept elsewhere (deduplication followers) ----------------------
    def to_json(self) -> str:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("queue", "entry_id")}
        for k in _BYTES:
            d[k] = base64.b64encode(d[k]).decode()
        return json.dumps(d, sort_keys=True)

    @staticmethod
    def from_json(text: str | bytes) -> "QueueEntry":
        d = json.loads(text)
        for k in _BYTES:
            d[k] = base64.b64decode(d[k])
        return QueueEntry(**d)
