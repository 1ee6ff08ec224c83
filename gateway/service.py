"""Batches as callers see them: submit, stream tasks in, watch, look up, cancel.

The gRPC servicer translates to and from these calls; this module holds the rules. A task is
*accepted* once its record is written and its first attempt is in its key's queue (both in
Redis); the `accepted` event is the first entry of the batch's event log, and the batch's
caller learns about it only by reading that log, so nothing a caller saw accepted is only in
memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from imagemesh import filenames, metrics, tracing
from imagemesh.auth import Caller
from imagemesh.credentials import Sealer
from imagemesh.errors import TaskFailure
from imagemesh.v1 import imagemesh_pb2 as pb

from .batches import REF, BatchStore, NewTask, batch_ref, task_id
from .dedup import Dedup, Follower, dedup_hash
from .dispatch import Dispatcher
from .entries import QueueEntry
from .fairness import klass
from .follower import UnknownBatch, serialized
from .queues import QueueName, TaskQueues
from .routing import Routing
from .tenants import KeysOverCap, TenantKeys
from .validation import BadRequest, Limits, check_batch, check_credentials, check_task

if TYPE_CHECKING:
    from .follower import EventFollower
    from .outputs import Outputs

log = logging.getLogger("imagemesh.gateway.service")


class NotFound(Exception):
    pass


class Forbidden(Exception):
    pass


class Overloaded(Exception):
    """Too much queued for this tenant: RESOURCE_EXHAUSTED with a retry hint."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def new_batch_id() -> str:
    return "b" + secrets.token_hex(8)


def _digest(req: pb.SubmitBatchRequest) -> str:
    """What makes a resubmission the same batch: its tasks and which providers it has tokens
    for (never the tokens themselves)."""
    h = hashlib.sha256()
    for t in req.tasks:
        data = t.SerializeToString(deterministic=True)
        h.update(len(data).to_bytes(4, "big") + data)
    h.update(",".join(sorted(req.credentials)).encode())
    return h.hexdigest()[:32]


class Prepared:
    """A task checked and routed, or failed with the reason."""

    __slots__ = ("index", "task", "queue", "provider_index", "failure", "pool")

    def __init__(self, index: int, task: pb.Task) -> None:
        self.index = index
        self.task = task
        self.queue: QueueName | None = None
        self.provider_index = 0
        self.failure: TaskFailure | None = None
        self.pool = "enhance" if task.HasField("enhance") else "generate"


class BatchService:
    def __init__(self, *, redis: aioredis.Redis, batches: BatchStore, queues: TaskQueues,
                 routing: Routing, sealer: Sealer, dispatcher: Dispatcher, limits: Limits,
                 dedup: Dedup, follower: EventFollower, writer_wait: float = 35.0,
                 outputs: Outputs | None = None, tenant_keys: TenantKeys | None = None) -> None:
        self.r = redis
        self.batches = batches
        self.queues = queues
        self.routing = routing
        self.sealer = sealer
        self.dispatcher = dispatcher
        self.limits = limits
        self.dedup = dedup
        self.writer_wait = writer_wait
        self.outputs = outputs
        self.tenant_keys = tenant_keys
        self.follower = follower

    # -- preparing tasks -----------------------------------------------------------------------
    def _prepare(self, caller: Caller, index: int, task: pb.Task, tokens: dict[str, str], klass: str) -> Prepared:
        """Check and route one task. The request's own message is changed in place (a sanitised
        filename, the usable providers), never copied: an enhance image in it may be megabytes."""
        p = Prepared(index, task)
        try:
            check_task(task, f"tasks[{index}]", self.limits)
        except TaskFailure as failure:
            p.failure = failure
        task.output_filename = filenames.sanitize(task.output_filename, default=f"task_{index}")
        if p.failure is not None:
            return p
        try:
            if p.pool == "generate":
                self.routing.validate_providers(task, is_admin=caller.is_admin, request_tokens=tokens)
                usable = self.routing.usable_providers(task, is_admin=caller.is_admin, request_tokens=tokens)
                del p.task.generate.providers[:]
                p.task.generate.providers.extend(usable)
                p.provider_index = self.routing.first_provider(p.task)
                provider = usable[p.provider_index]
                token = tokens.get(provider) or self.routing.server_token(provider)
                p.queue = self.routing.queue_at_submit(p.task, p.provider_index, token, tenant=caller.tenant,
                                                       klass=klass)
            else:
                p.queue = self.routing.queue_at_submit(p.task, 0, None, tenant=caller.tenant, klass=klass)
        except TaskFailure as failure:
            p.failure = failure
        return p

    def _sealed(self, tokens: dict[str, str]) -> dict[str, bytes]:
        return {provider: self.sealer.seal(token) for provider, token in tokens.items()}

    def _failed_result(self, batch_id: str, p: Prepared) -> tuple[str, int, str, pb.TaskResult, bool]:
        assert p.failure is not None
        result = pb.TaskResult(
            task_index=p.index, task_id=task_id(batch_id, p.index), output_filename=p.task.output_filename,
            state=pb.FAILED, labels=dict(p.task.labels), attempts=0,
            error=pb.TaskError(code=p.failure.code, message=p.failure.message, retryable=False))
        return batch_id, p.index, "*", result, False

    # -- submitting ----------------------------------------------------------------------------
    def ref(self, caller: Caller, batch_id: str) -> str:
        """The mesh's name of the caller's batch `batch_id` (gateway.batches.batch_ref). An admin
        may also name any tenant's batch by its ref (task ids start with it)."""
        if caller.is_admin and REF.match(batch_id):
            return batch_id
        return batch_ref(caller.tenant, batch_id)

    async def submit(self, caller: Caller, req: pb.SubmitBatchRequest) -> str:
        """Accept a batch once; returns its ref (events and statuses show the caller's id). A
        batch id already accepted for this caller is answered with that batch (nothing re-runs,
        whatever the number of concurrent or repeated calls); another tenant's batch of the same
        id is no concern of this one (ids are per tenant). Raises BadRequest, Overloaded,
        RedisError."""
        check_batch(len(req.tasks), req.batch_id, self.limits)
        tokens = dict(req.credentials)
        check_credentials(tokens, self.routing.s.providers)
        public = req.batch_id or new_batch_id()
        batch_id = batch_ref(caller.tenant, public)
        if req.batch_id:
            meta = await self.batches.meta(batch_id)
            if meta is not None and meta.tenant == caller.tenant and meta.accepted:
                return batch_id  # the same batch again: don't count it against the backlog twice
        size = req.ByteSize()
        await self._admit(caller, len(req.tasks), size)
        prepared = [self._prepare(caller, i, t, tokens, klass(req.priority)) for i, t in enumerate(req.tasks)]
        if all(p.failure is not None for p in prepared):
            # Nothing in the batch can run: say why as a status, not as N failed results.
            first = prepared[0].failure
            raise BadRequest(first.message if first else "no valid task")
        await self._admit_keys(caller, prepared)
        writer = secrets.token_hex(8)
        digest = _digest(req)
        deadline = time.monotonic() + self.writer_wait
        while True:
            r = await self.batches.reserve(batch_id, caller.tenant, len(prepared), writer=writer,
                                           digest=digest, input_bytes=size)
            if r.outcome == "accepted":
                return batch_id
            if r.outcome == "foreign":
                raise Forbidden(f"batch_id {batch_id!r} belongs to another caller")
            if r.outcome == "mismatch":
                raise BadRequest(f"batch_id: {batch_id!r} was already used for other tasks; "
                                 "resubmit the same tasks or choose a new id")
            if r.outcome == "write":
                break
            # Another call is writing this batch right now: wait for it (or for its deadline,
            # after which we take over: it crashed).
            if time.monotonic() > deadline:
                raise Overloaded(f"batch {batch_id!r} is still being accepted by another call", retry_after=1.0)
            await asyncio.sleep(min(0.2, max(0.01, r.wait_ms / 1000)))
        await self._write(caller, batch_id, public, prepared, tokens, writer)
        return batch_id

    async def _admit_keys(self, caller: Caller, prepared: list[Prepared]) -> None:
        """The provider keys the tasks use count against the tenant's cap on distinct keys."""
        if self.tenant_keys is None:
            return
        keys = {p.queue.key_id for p in prepared if p.failure is None and p.queue is not None and p.pool == "generate"}
        try:
            await self.tenant_keys.admit(caller.tenant, keys)
        except KeysOverCap as exc:
            raise Overloaded(str(exc), retry_after=60.0) from None

    async def _admit(self, caller: Caller, tasks: int, size: int) -> None:
        """Backpressure per tenant: what it has queued, in tasks and in input bytes, is capped,
        so one caller can't fill Redis (or starve the others) however much it submits; and what
        it has stored (outputs, uploads) is capped by its quota."""
        full = await self.outputs.over_quota(caller.tenant) if self.outputs else None
        if full:
            raise Overloaded(full, retry_after=60.0)
        queued, queued_bytes = await self.batches.tenant_backlog(caller.tenant)
        if queued + tasks > self.limits.max_queued_per_tenant:
            raise Overloaded(f"too many unfinished tasks for this caller: {queued} queued + {tasks} new, "
                             f"the limit is {self.limits.max_queued_per_tenant}; retry when some finish",
                             retry_after=5.0)
        if queued_bytes + size > self.limits.max_queued_bytes_per_tenant:
            raise Overloaded(f"too many input bytes queued for this caller: {queued_bytes} + {size}, "
                             f"the limit is {self.limits.max_queued_bytes_per_tenant}", retry_after=5.0)

    async def _write(self, caller: Caller, batch_id: str, public: str, prepared: list[Prepared],
                     tokens: dict[str, str], writer: str) -> None:
        """RECORDS ─▶ entries pushed ─▶ COMMIT (see gateway.batches): each step may be repeated
        by a writer that takes over after a crash; a task is recorded and queued once."""
        meta = await self.batches.meta(batch_id)
        accepted_ms = meta.created_ms if meta else 0
        hashes = {p.index: (dedup_hash(caller.tenant, p.task) if p.failure is None else None) for p in prepared}
        await self.batches.write_records(
            batch_id, [NewTask(p.index, p.task.output_filename, p.pool, hashes[p.index] or "") for p in prepared],
            sealed_tokens=self._sealed(tokens))
        good = [p for p in prepared if p.failure is None]
        pushes, copies = [], []
        for p in good:
            entry = self._entry(batch_id, caller.tenant, p, accepted_ms, hashes[p.index])
            kind, leader_result = await self._deduplicate(batch_id, p, entry)
            if kind == "done":
                copies.append((batch_id, p.index, "*", leader_result, False))
            elif kind == "lead":
                pushes.append((p.queue, entry))
        await self.queues.push(pushes)
        # Recorded before COMMIT, these are stashed and logged right after `accepted`.
        await self.batches.finish_many([self._failed_result(batch_id, p) for p in prepared if p.failure] + copies)
        accepted = pb.Accepted(batch_id=public, task_ids=[task_id(batch_id, p.index) for p in prepared])
        committed = await self.batches.commit(batch_id, writer, accepted)
        for p in good:
            self.dispatcher.note_queue(p.queue)  # type: ignore[arg-type]
        if committed == 1:
            for p in good:
                metrics.TASKS_ACCEPTED.labels(p.pool).inc()

    def _entry(self, batch_id: str, tenant: str, p: Prepared, accepted_ms: int, dedup: str | None) -> QueueEntry:
        # Inside the SubmitBatch span (gateway.api): the task's trace goes on from there.
        assert p.queue is not None
        return QueueEntry(batch_id=batch_id, index=p.index, attempt=1, accepted_ms=accepted_ms,
                          task=p.task.SerializeToString(), provider_index=p.provider_index, dedup=dedup or "",
                          tenant=tenant, klass=p.queue.klass, trace=tracing.entry_field() or "")

    async def _deduplicate(self, batch_id: str, p: Prepared, entry: QueueEntry) -> tuple[str, pb.TaskResult | None]:
        """"lead" (queue it), "follow" (the leader's result will be copied to it) or "done"
        (a copy of the leader's result, just finished)."""
        if not entry.dedup:
            return "lead", None
        assert p.queue is not None
        follower = Follower(batch_id=batch_id, index=p.index, task_id=task_id(batch_id, p.index),
                            output_filename=p.task.output_filename, labels=dict(p.task.labels),
                            queue=p.queue.redis_key(self.queues.prefix), entry=entry.to_json())
        kind, result = await self.dedup.join(entry.dedup, follower)
        return kind, (follower.copy(result) if result is not None else None)

    # -- stream sessions -----------------------------------------------------------------------
    async def open_session(self, caller: Caller, req: pb.StreamOpen) -> str:
        """Open a session's batch; returns its ref (the session's other calls take it)."""
        if req.batch_id:
            check_batch(1, req.batch_id, self.limits)
        check_credentials(dict(req.credentials), self.routing.s.providers)
        public = req.batch_id or new_batch_id()
        batch_id = batch_ref(caller.tenant, public)
        writer = secrets.token_hex(8)
        r = await self.batches.reserve(batch_id, caller.tenant, 0, writer=writer, session=True)
        if r.outcome == "foreign":
            raise Forbidden(f"batch_id {batch_id!r} belongs to another caller")
        if r.outcome != "write":
            raise BadRequest(f"batch_id {public!r}: a batch with this id exists; watch it with WatchBatch")
        await self.batches.commit(batch_id, writer, pb.Accepted(batch_id=public))
        return batch_id

    async def add_to_session(self, caller: Caller, batch_id: str, index: int, task: pb.Task,
                             tokens: dict[str, str], priority: int = 0) -> None:
        """RECORDS ─▶ entry pushed ─▶ ACCEPT_TASK: `task_accepted` is logged once the task is
        queued (a crash before leaves a task nobody was told about)."""
        if index >= self.limits.max_batch_tasks:
            raise BadRequest(f"tasks: more than {self.limits.max_batch_tasks} tasks in one session")
        await self._admit(caller, 1, task.ByteSize())
        p = self._prepare(caller, index, task, tokens, klass(priority))
        await self._admit_keys(caller, [p])
        meta = await self.batches.meta(batch_id)
        if meta is None or meta.closed:
            raise BadRequest("the session is closed")
        h = dedup_hash(caller.tenant, p.task) if p.failure is None else None
        await self.batches.write_records(batch_id, [NewTask(index, p.task.output_filename, p.pool, h or "")],
                                         sealed_tokens=self._sealed(tokens) if index == 0 else None)
        if p.failure is not None:
            await self.batches.finish_many([self._failed_result(batch_id, p)])
        else:
            entry = self._entry(batch_id, caller.tenant, p, meta.created_ms, h)
            kind, leader_result = await self._deduplicate(batch_id, p, entry)
            if kind == "lead":
                await self.queues.push([(p.queue, entry)])  # type: ignore[list-item]
            elif kind == "done":
                await self.batches.finish_many([(batch_id, p.index, "*", leader_result, False)])
        if await self.batches.accept_task(batch_id, index) != 1:
            raise BadRequest("the session is closed")
        if p.failure is None:
            metrics.TASKS_ACCEPTED.labels(p.pool).inc()
            self.dispatcher.note_queue(p.queue)  # type: ignore[arg-type]

    async def close_session(self, batch_id: str) -> None:
        await self.batches.close(batch_id)

    # -- reading -------------------------------------------------------------------------------
    async def _owned(self, caller: Caller, batch_id: str):
        meta = await self.batches.meta(self.ref(caller, batch_id))
        if meta is None or (meta.tenant != caller.tenant and not caller.is_admin):
            # Another tenant's batch is reported as missing: ids are not an oracle.
            raise NotFound(f"batch {batch_id!r} not found (unknown, expired, or not yours)")
        return meta

    async def watch(self, caller: Caller, batch_id: str, after: str = "") -> AsyncIterator[bytes]:
        """Raises NotFound, BadCursor (malformed, or beyond the batch's last event)."""
        def visible(tenant: str | None) -> bool:  # as _owned: another tenant's batch is missing
            return tenant is not None and (tenant == caller.tenant or caller.is_admin)

        try:
            async with contextlib.aclosing(self.events(self.ref(caller, batch_id), after, visible=visible)) as events:
                async for event in events:
                    yield event
        except UnknownBatch:
            raise NotFound(f"batch {batch_id!r} not found (unknown, expired, or not yours)") from None

    def events(self, batch_id: str, after: str = "", *,
               visible: Callable[[str | None], bool] | None = None) -> AsyncIterator[bytes]:
        """The batch's events as the serialized `BatchEvent`s a client receives, relayed from
        the gateway's one reader of event logs (`gateway.follower`, which also checks
        `visible`); stored files get download URLs signed now (S3). Raises UnknownBatch,
        BadCursor, RedisError."""
        entries = self.follower.events(batch_id, after, visible=visible)
        if self.outputs is not None and self.outputs.signs_urls:
            return self.outputs.presented(entries)
        return serialized(entries)

    async def status(self, caller: Caller, batch_id: str) -> pb.BatchStatus:
        await self._owned(caller, batch_id)
        status = await self.batches.status(self.ref(caller, batch_id))
        if status is None:
            raise NotFound(f"batch {batch_id!r} not found")
        status.batch_id = batch_id
        return status

    async def cancel(self, caller: Caller, batch_id: str) -> pb.BatchStatus:
        """Queued tasks become CANCELLED at once; running ones are cancelled at their workers
        (every gateway hears it) and their late results are discarded."""
        await self._owned(caller, batch_id)
        ref = self.ref(caller, batch_id)
        cancelled = await self.batches.cancel(ref)
        for pool, n in cancelled.items():
            if n:
                metrics.TASKS_FINISHED.labels(pool, "cancelled").inc(n)
        await self.dispatcher.announce_cancel(ref)
        return await self.status(caller, batch_id)
