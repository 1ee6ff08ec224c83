"""One reader of the batches' event logs per gateway, fanning each event out to every client
stream that follows its batch, as the bytes the client receives.

    _run ───────── one XREAD BLOCK over every followed batch's log, each from the batch's own
                   cursor F, on one connection ─▶ each entry encoded once
                   (`batches.encode_event`: no parse) ─▶ the buffer of each subscriber of it
    events(B, a) ─ a subscriber (one client stream): replays (a, F0] with XRANGE pages of its
                   own, at its own pace, then takes the live entries from its buffer

Before, each open stream held a connection in a blocking XREAD of its own (300 WatchBatch
streams: 305 Redis clients) and parsed every event for gRPC to serialise it again.

Hand-over from replay to live, without a gap or a duplicate. Everything runs on one event loop,
and the follower fans a reply out without awaiting, so between awaits each followed batch has
one cursor F: every entry ≤ F was offered to each subscriber registered when it was read, and
every entry > F will be offered to each subscriber registered when it is read. A subscriber
registers (synchronously, no await) and notes F0 = F; entries > F0 then reach its buffer, and
it replays (a, F0] itself. The log is ordered by id, so the replay then the buffer is the whole
log after `a`, in order:

    log        ──e1──e2──e3──│F0──e4──e5──e6──▶
    replay     (a ........ F0]                  XRANGE pages, while e4… are buffered
    live                      e4──e5──e6──▶      from the buffer

A subscriber drops any entry whose id is not above the last one it yielded (a client cursor
ahead of F0, a page read twice), so an overlap is never a duplicate. A batch nobody follows yet
starts at its log's last id L, read (XREVRANGE) just before registering: entries > L are the
follower's to read, ≤ L the replay's.

New batches are picked up at once: the follower's connection id (CLIENT ID) is known, and
following a batch that the XREAD in flight does not cover sends CLIENT UNBLOCK <id> from another
connection; the XREAD returns as if its block had timed out and is issued again with the batch.
If the XREAD has not reached Redis yet (UNBLOCK answers 0), it is tried again 2 ms later; when
the UNBLOCK itself fails (a Redis that refuses CLIENT), the batch waits for the block timeout.
Measured here: a newly followed batch's next event reaches its subscriber in ~1 ms (median of
20, max 1.5 ms); without the UNBLOCK, ~1.9 s (block 2 s). A watcher of a batch already followed
needs no UNBLOCK at all.

Bounded: a subscriber's buffer holds at most `buffer_events` entries and `buffer_bytes` bytes
(at least one entry). A subscriber whose buffer is full (its client is slower than its batch)
leaves the fan-out and its buffer is freed; it goes on from its own last cursor with XRANGE
pages of its own (the replay above, read only as fast as the client takes events), then joins
the fan-out again. Its client sees none of this. Entries are shared: a batch followed by many
streams holds each entry once. Reads ask for fewer entries when entries are large (inline
outputs): about `read_bytes` per batch per read.

Ends: the summary ends a subscription, and the follower stops reading a batch once it read its
summary; the last subscriber leaving unfollows its batch; a batch whose log and record are both
gone (expired) ends its subscribers without a summary (batches that got no entry are checked
every `expiry_check_ms`).

Redis errors: on the follower's connection, it reconnects with backoff (a new CLIENT ID) and
resumes each batch from its cursor F; subscribers wait, then get what came meanwhile, once.
Past `outage_s` of errors, its subscribers end with the error instead. A replay read that fails
raises RedisError in its stream. Either way the client sees UNAVAILABLE and re-attaches with its
cursor (`imagemesh.Client` does), here or on another gateway.

Redis connections: the blocking one, and a pool of at most `read_connections` (replays, log
heads, existence checks, CLIENT UNBLOCK), whatever the number of streams. One XREAD spans many
hash slots: this needs a single Redis (or a Sentinel's primary), as the gateway does; on Redis
Cluster it would take one follower per node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from . import redis_client
from .batches import (BatchStore, check_cursor_format, cursor_key, encode_event, event_head, judge_cursor,
                      public_id)

log = logging.getLogger("imagemesh.gateway.follower")

SUMMARY = b"summary"
# Connection names (CLIENT LIST shows them).
READER_NAME, READS_NAME = "imagemesh-follower", "imagemesh-follower-reads"


@dataclass(frozen=True)
class FollowerSettings:
    # How long one XREAD waits (new batches interrupt it: CLIENT UNBLOCK).
    block_ms: int = 2000
    # How often batches that got no entry meanwhile are checked for expiry (EXISTS each).
    expiry_check_ms: int = 10_000
    # Entries read per batch per XREAD, and per replay read (at most).
    count: int = 100
    # A subscriber's buffer of live entries (at least one entry, whatever its size).
    buffer_events: int = 256
    buffer_bytes: int = 1024 * 1024
    page: int = 200
    # Fewer when entries are large (inline outputs): a read of one batch holds about this many
    # bytes, judged by the size of the entries read last.
    read_bytes: int = 4 * 1024 * 1024
    # The pool for everything but the blocking read.
    read_connections: int = 4
    # Subscribers wait through a Redis outage this long, then end with the error (UNAVAILABLE:
    # their clients re-attach, maybe to another gateway).
    outage_s: float = 30.0


class Entry:
    """One event of a batch's log: its id (the cursor, and `key`, ordered as the log), kind
    (b"result", ...) and the serialized `BatchEvent` a client receives."""

    __slots__ = ("cursor", "key", "kind", "wire")

    def __init__(self, cursor: bytes, kind: bytes, wire: bytes) -> None:
        self.cursor = cursor
        self.key = cursor_key(cursor)
        self.kind = kind
        self.wire = wire


def _sized(most: int, budget: int, last: list[Entry]) -> int:
    """How many entries the next read may ask for, so that it holds about `budget` bytes
    judging by the entries read last (at least 1, at most `most`)."""
    size = sum(len(e.wire) for e in last)
    return max(1, min(most, budget * len(last) // max(1, size)))


async def serialized(entries: AsyncIterator[Entry]) -> AsyncIterator[bytes]:
    """The entries' serialized `BatchEvent`s, as a client receives them."""
    async with contextlib.aclosing(entries) as events:  # type: ignore[type-var]
        async for entry in events:
            yield entry.wire


class UnknownBatch(LookupError):
    """The batch does not exist (expired, never did) or the caller may not see it."""


@dataclass(frozen=True)
class _Head:
    """A batch as a subscriber starts: its log's last entry (None: no log) and its tenant (None:
    no record)."""

    last: tuple[bytes, dict[bytes, bytes]] | None
    tenant: str | None

    @property
    def complete(self) -> bool:
        """Nothing more will be appended: the summary is in, or the batch is gone."""
        if self.last is None:
            return self.tenant is None
        return self.last[1].get(b"k") == SUMMARY


class _Subscriber:
    __slots__ = ("batch_id", "last", "last_id", "buffer", "size", "wakeup", "batch", "detached", "gone", "failure")

    def __init__(self, batch_id: str, after: str) -> None:
        self.batch_id = batch_id
        self.last_id = (after or "0-0").encode()
        self.last = cursor_key(self.last_id)
        self.buffer: deque[Entry] = deque()
        self.size = 0
        self.wakeup = asyncio.Event()
        self.batch: _Batch | None = None
        self.detached = False  # left the fan-out (buffer full): catch up with reads of its own
        self.gone = False  # the batch expired: end after what is buffered
        self.failure: RedisError | None = None  # Redis is out too long: raise it after what is buffered

    def offer(self, entry: Entry, max_events: int, max_bytes: int) -> bool:
        if self.buffer and (len(self.buffer) >= max_events or self.size + len(entry.wire) > max_bytes):
            return False
        self.buffer.append(entry)
        self.size += len(entry.wire)
        self.wakeup.set()
        return True

    def take(self) -> Entry:
        entry = self.buffer.popleft()
        self.size -= len(entry.wire)
        return entry

    def fresh(self, entry: Entry) -> bool:
        """Whether the entry comes after the last one yielded (then it becomes the last)."""
        if entry.key <= self.last:
            return False
        self.last = entry.key
        self.last_id = entry.cursor
        return True


class _Batch:
    """A followed batch: its log, the follower's cursor in it, its subscribers."""

    __slots__ = ("batch_id", "key", "meta_key", "head", "cursor", "subscribers", "active")

    def __init__(self, batch_id: str, key: bytes, meta_key: bytes, cursor: bytes) -> None:
        self.batch_id = batch_id
        self.key = key
        self.meta_key = meta_key
        self.head = event_head(public_id(batch_id))  # clients see their own batch id
        self.cursor = cursor
        self.subscribers: set[_Subscriber] = set()
        self.active = True  # an entry came since the last expiry check (a new batch counts)


class EventFollower:
    """See the module docstring. `start()` before `events()`; `stop()` ends every subscription."""

    def __init__(self, redis_url: str, batches: BatchStore, settings: FollowerSettings = FollowerSettings()) -> None:
        self.batches = batches
        self.s = settings
        # The blocking read: one connection of its own (its id is what UNBLOCK names), no
        # retries inside redis-py (a silent reconnect would change the id behind our back).
        self._conn = redis_client.client(
            redis_url, single_connection_client=True, retry=Retry(NoBackoff(), 0), client_name=READER_NAME,
            socket_timeout=settings.block_ms / 1000 + 10.0, socket_connect_timeout=2.0, socket_keepalive=True)
        self._reads = aioredis.Redis(connection_pool=redis_client.blocking_pool(
            redis_url, max_connections=settings.read_connections, timeout=20, socket_timeout=5.0,
            socket_connect_timeout=2.0, client_name=READS_NAME))
        self._batches: dict[str, _Batch] = {}
        self._wanted = asyncio.Event()  # a batch is followed: the idle loop goes on
        self._generation = 0  # counts batches followed; the XREAD in flight covers _issued
        self._issued = 0
        self._blocked = False  # an XREAD is in flight
        self._client_id: int | None = None
        self._unblocker: asyncio.Task | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._next_check = 0.0
        self._count = settings.count
        # Counters for tests and logs.
        self.reads = 0
        self.detaches = 0
        self.unblocks = 0

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-follower")

    async def stop(self) -> None:
        self._stopping = True
        self._wanted.set()
        for task in (self._task, self._unblocker):
            # Cancel until done: redis-py can swallow a cancellation that lands at the wrong
            # moment (redis/redis-py#2028); the flag above ends the loop then.
            while task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.5)
        for batch in list(self._batches.values()):
            self._end(batch)
        await self._conn.aclose()
        await self._reads.aclose(close_connection_pool=True)  # a pool we made: ours to close

    @property
    def followed(self) -> int:
        """Batches being read."""
        return len(self._batches)

    @property
    def subscribers(self) -> int:
        """Subscribers in the fan-out (not those replaying on their own after leaving it)."""
        return sum(len(b.subscribers) for b in self._batches.values())

    # -- subscribers ---------------------------------------------------------------------------
    async def events(self, batch_id: str, after: str = "", *,
                     visible: Callable[[str | None], bool] | None = None) -> AsyncIterator[Entry]:
        """Every event of the batch after cursor `after` (from the start if empty), then new ones
        as they come, until the summary (or until the batch is gone: then it ends without one).
        `visible(tenant)`, given the batch's tenant (None: no such batch), says whether the
        caller may see it; read with the log's head, in the same round trip.

        Raises, at once: UnknownBatch when not `visible`; BadCursor for a malformed cursor or
        one beyond the log (the summary's cursor ends at once, with nothing). RedisError when a
        read of its own fails."""
        head = await self._head(batch_id)
        if visible is not None and not visible(head.tenant):
            raise UnknownBatch(batch_id)
        if after:
            check_cursor_format(after)
        if judge_cursor(after, head.last):
            return
        sub = _Subscriber(batch_id, after)
        key, head_field = self.batches.events_key(batch_id), event_head(public_id(batch_id))
        try:
            while True:
                if head is None and batch_id not in self._batches:
                    head = await self._head(batch_id)
                upto = self._join(sub, head)
                head = None
                # Replay (last, upto] with reads of our own; upto None: the log is complete,
                # replay it to its end.
                page = self.s.page
                while True:
                    rows = await self._reads.xrange(key, min=b"(" + sub.last_id, max=upto or b"+", count=page)
                    entries = [Entry(raw_id, fields.get(b"k", b""), encode_event(head_field, raw_id, fields))
                               for raw_id, fields in rows]
                    del rows
                    for entry in entries:
                        if sub.fresh(entry):
                            yield entry
                            if entry.kind == SUMMARY:
                                return
                    if len(entries) < page:
                        break
                    page = _sized(self.s.page, self.s.read_bytes, entries)
                if upto is None:
                    return
                # Live, from the buffer.
                while True:
                    while sub.buffer:
                        entry = sub.take()
                        if sub.fresh(entry):
                            yield entry
                            if entry.kind == SUMMARY:
                                return
                    if sub.gone:
                        return
                    if sub.failure is not None:
                        raise sub.failure
                    if sub.detached:
                        break  # too slow for the fan-out: catch up from our own cursor, join again
                    sub.wakeup.clear()
                    await sub.wakeup.wait()
        finally:
            self._leave(sub)

    async def _head(self, batch_id: str) -> _Head:
        pipe = self._reads.pipeline(transaction=False)
        pipe.xrevrange(self.batches.events_key(batch_id), count=1)
        pipe.hget(self.batches.meta_key(batch_id), "tenant")
        last, tenant = await pipe.execute()
        return _Head(last[0] if last else None, tenant.decode() if tenant is not None else None)

    def _join(self, sub: _Subscriber, head: _Head | None) -> bytes | None:
        """Put `sub` in the fan-out of its batch; returns F0, up to which it replays. A batch not
        followed yet is followed from `head` (read just before, no await since), unless its log
        is complete: then None (replay to its end; nothing will be buffered)."""
        batch = self._batches.get(sub.batch_id)
        if batch is None:
            assert head is not None
            if head.complete:
                return None
            batch = self._follow(sub.batch_id, head.last[0] if head.last else b"0-0")
        batch.subscribers.add(sub)
        sub.batch = batch
        sub.detached = False
        return batch.cursor

    def _leave(self, sub: _Subscriber) -> None:
        batch, sub.batch = sub.batch, None
        sub.buffer.clear()
        if batch is not None:
            batch.subscribers.discard(sub)
            if not batch.subscribers:
                self._unfollow(batch)

    def _detach(self, sub: _Subscriber) -> None:
        """A full buffer: out of the fan-out, buffer freed; it catches up on its own."""
        self.detaches += 1
        self._leave(sub)
        sub.size = 0
        sub.detached = True
        sub.wakeup.set()

    # -- the follower --------------------------------------------------------------------------
    def _follow(self, batch_id: str, cursor: bytes) -> _Batch:
        batch = _Batch(batch_id, self.batches.events_key(batch_id).encode(),
                       self.batches.meta_key(batch_id).encode(), cursor)
        self._batches[batch_id] = batch
        self._generation += 1
        self._wanted.set()
        if self._blocked and (self._unblocker is None or self._unblocker.done()):
            self._unblocker = asyncio.create_task(self._unblock())
        return batch

    def _unfollow(self, batch: _Batch) -> None:
        # The XREAD in flight may still name it: its entries are dropped (see _fan_out).
        if self._batches.get(batch.batch_id) is batch:
            del self._batches[batch.batch_id]

    def _end(self, batch: _Batch, failure: RedisError | None = None) -> None:
        """The batch is gone (or Redis, for too long: `failure`): its subscribers end after what
        they hold."""
        self._unfollow(batch)
        for sub in batch.subscribers:
            sub.gone = failure is None
            sub.failure = failure
            sub.wakeup.set()

    async def _unblock(self) -> None:
        """Until the XREAD in flight covers every followed batch: CLIENT UNBLOCK it."""
        for _ in range(100):
            if not self._blocked or self._issued >= self._generation or self._client_id is None:
                return
            try:
                unblocked = await self._reads.client_unblock(self._client_id)
            except RedisError as exc:
                log.debug("CLIENT UNBLOCK failed (%s): new batches wait for the block timeout", type(exc).__name__)
                return
            if unblocked:
                self.unblocks += 1
                return
            await asyncio.sleep(0.002)  # the XREAD is on its way to Redis, or its reply to us

    async def _run(self) -> None:
        delay, failing_since = 0.05, None
        while not self._stopping:
            if not self._batches:
                self._wanted.clear()
                await self._wanted.wait()
                continue
            try:
                await self._read()
                delay, failing_since = 0.05, None
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                self._client_id = None
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self.s.outage_s:
                    log.warning("event follower: Redis unavailable for %.0fs (%s); ending %d streams (UNAVAILABLE)",
                                self.s.outage_s, type(exc).__name__, self.subscribers)
                    for batch in list(self._batches.values()):
                        self._end(batch, exc)
                else:
                    log.warning("event follower: Redis error (%s); reconnecting, %d batches resume from their "
                                "cursors", type(exc).__name__, len(self._batches))
                with contextlib.suppress(Exception):
                    if self._conn.connection is not None:
                        await self._conn.connection.disconnect()
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
            except Exception:  # a malformed entry: never stop following every other batch
                log.exception("event follower: unexpected error; going on")
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    async def _read(self) -> None:
        if self._client_id is None:
            self._client_id = int(await self._conn.client_id())
        if time.monotonic() >= self._next_check:
            await self._check_expiry()
            if not self._batches:
                return
        batches = {b.key: b for b in self._batches.values()}
        streams = {b.key: b.cursor for b in batches.values()}
        self._issued = self._generation
        self._blocked = True
        try:
            reply = await self._conn.xread(streams, count=self._count, block=self.s.block_ms)
        finally:
            self._blocked = False
        self.reads += 1
        if reply:
            self._fan_out(batches, reply)

    def _fan_out(self, batches: dict[bytes, _Batch], reply) -> None:
        """Offer each entry to every subscriber of its batch. No await in here: see the
        module docstring (the hand-over rests on it)."""
        s = self.s
        read: list[Entry] = []
        for key, rows in reply:
            batch = batches.get(key)
            for raw_id, fields in rows:
                if batch is None or self._batches.get(batch.batch_id) is not batch:
                    break  # unfollowed (and maybe followed again, from its own cursor) meanwhile
                batch.active = True
                batch.cursor = raw_id
                entry = Entry(raw_id, fields.get(b"k", b""), encode_event(batch.head, raw_id, fields))
                read.append(entry)
                for sub in tuple(batch.subscribers):
                    if not sub.offer(entry, s.buffer_events, s.buffer_bytes):
                        self._detach(sub)
                if entry.kind == SUMMARY:
                    self._unfollow(batch)  # nothing comes after it; its subscribers end on it
        if read:
            self._count = _sized(s.count, s.read_bytes, read)

    async def _check_expiry(self) -> None:
        """Batches that got no entry since the last check: end those whose log and record are
        both gone (expired, deleted)."""
        self._next_check = time.monotonic() + self.s.expiry_check_ms / 1000
        quiet = [b for b in self._batches.values() if not b.active]
        for b in self._batches.values():
            b.active = False
        if not quiet:
            return
        pipe = self._reads.pipeline(transaction=False)
        for b in quiet:
            pipe.exists(b.key, b.meta_key)
        for b, n in zip(quiet, await pipe.execute()):
            if not n and self._batches.get(b.batch_id) is b:
                log.info("batch %s is gone (expired): its %d streams end", b.batch_id, len(b.subscribers))
                self._end(b)
