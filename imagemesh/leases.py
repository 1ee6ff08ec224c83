"""Mesh-wide concurrency leases per provider API key, held in Redis.

Every provider key (`key_id` = ``provider:fingerprint``; this module never sees a token) has a
limit. A *lease* is one of its slots. Leases hold across every process that shares the Redis:
each grant, renewal and release is one atomic Lua script, with time taken only from Redis
``TIME`` (clocks of the callers never enter a decision).

Redis layout, all of one key under one hash tag so the scripts run on Redis Cluster::

    {p}:lease:{K}:meta     hash   epoch, born, qu (quarantine end), limit, fence, seq
    {p}:lease:{K}:held     zset   lease id -> expiry (ms): renewals push it forward
    {p}:lease:{K}:ends     zset   lease id -> hard end (ms): max(granted + max_job_runtime, expiry)
    {p}:lease:{K}:info     hash   lease id -> "fence|granted_ms|holder"
    {p}:lease:{K}:queue    zset   ticket -> arrival sequence (FIFO order of waiters)
    {p}:lease:{K}:tickets  zset   ticket -> expiry (ms): a waiter that stops refreshing drops out
    {p}:lease:{K}:wants    hash   ticket -> "n|wake channel"
    {p}:lease:{K}:gone     zset   ticket -> until (ms): tombstones of cancelled acquires
    {p}:lease:keys         set    every key id seen (for listings; outside the hash tag)

Waiting is FIFO: a process's waiters on a key line up locally, in arrival order, behind one
*ticket* in Redis that asks for all of them; a slot goes to the oldest ticket first (a ticket
asking for n is served as soon as one slot is free and takes up to n). A ticket served in part
waits for the rest at the end of the line, so processes take turns and none starves another
(strict per-waiter FIFO holds between processes with one waiter each). When a
slot frees (release, a limit raised, a zombie's hard end passed, a dead waiter's ticket expired)
the script that saw it PUBLISHes the ticket on its holder's channel
(``{p}:lease:wake:<holder>``), and that waiter asks again at once: no sleep-polling. Waiters
refresh their tickets every ``ticket_ttl / 3``; the refresh doubles as a safety net for a
wake-up lost while the pub/sub connection was down.

Zombies, and the expired-holder race
------------------------------------
The classic lock race (see redis-py's ``Lock``) goes::

    t0  A acquires the slot (expiry t0 + ttl) and starts a provider job
    t1  A's process stalls (GC pause, partition, Redis unreachable) and stops renewing
    t2  the expiry passes; a naive lock frees the slot and B acquires it
    t3  A's provider job is still running: two jobs on one slot, the key is over its limit

Here an expired lease is *not* freed: its job may still run at the provider. It stays counted
as a "zombie" until it is released (its job is known finished) or until its hard end,
``max_job_runtime`` after the grant (later if it was renewed past that), so at t2 B waits.
The holder side keeps a monotonic *local deadline* per lease: the time the acquire (or renew)
was *sent* + ttl - margin, extended by each successful renewal. A holder that cannot renew
before its deadline must stop its job itself (the lease comes back as lost). So::

    t0  A sends acquire, granted; A's deadline = t0 + ttl - margin (local, monotonic)
    t1  renewals fail (short timeout, no retry); A's watchdog cancels the job at its deadline
    t2  Redis expiry passes: the lease is a zombie, still counted; B's ticket waits
    t3  A releases (its job ended) or the hard end passes: B's ticket is woken and served

Lost Redis state (quarantine)
-----------------------------
Each key has an *epoch* marker (``meta.epoch``) that every process remembers once it has seen
it. If a script finds no epoch, or another epoch, than the one the caller has seen, Redis lost
the key's state (restart without persistence, failover to a replica that missed writes). The
key then enters a quarantine until ``born + max_job_runtime`` (born: when the new epoch was
made, after the loss): every job of a lost lease is over by then. During the quarantine no
lease is granted (fail closed), and a renewal of a lease Redis no longer knows re-creates it
(live holders re-adopt their leases, so they are still counted afterwards). Fence numbers of a
new epoch start at Redis time in microseconds, above every fence of the lost epoch.

Edge case: a process that has never seen the key (a brand-new process after a wipe) cannot tell
a wiped key from a never-used one; it creates the key fresh, without quarantine. If older
processes still hold leases, their next renewal (within ttl/3) finds the changed epoch and starts
the quarantine then; grants made in between, and zombies of holders that died before the wipe,
are not counted. Run Redis with persistence to make this window unreachable.

Redis settings this relies on
-----------------------------
- ``maxmemory-policy noeviction``: an evicted lease key would over-admit silently.
- ``appendonly yes`` (``appendfsync everysec`` or ``always``): a restart keeps the leases; without
  it every restart costs a quarantine of ``max_job_runtime`` per key.
- Replication is asynchronous: a failover can lose recent grants (the quarantine covers keys
  whose meta was lost, not single grants lost from a surviving meta; use ``WAIT`` /
  a single primary if that matters).
- Scripts use ``TIME`` and then write: fine since Redis 5 (effects replication, the default
  and only mode from Redis 7).

When Redis is unreachable nothing is granted (fail closed), ``imagemesh_redis_up`` drops to 0,
waiters keep their place and retry, and holders lose their leases at their local deadlines.

A limit <= 0 means unlimited: leases are still granted, recorded and renewed (so listings show
them), never refused.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from imagemesh import metrics

log = logging.getLogger(__name__)

# --- Lua --------------------------------------------------------------------------------------
# Every script takes the same eight KEYS (see the module docstring for their types):
#   KEYS[1] meta  KEYS[2] held  KEYS[3] ends  KEYS[4] info
#   KEYS[5] queue KEYS[6] tickets KEYS[7] wants KEYS[8] gone
# and starts with the same four ARGV:
#   ARGV[1] epoch the caller has seen ('' if none)   ARGV[2] ttl (ms)
#   ARGV[3] max job runtime (ms)                      ARGV[4] default limit (used if none is set)
_PRELUDE = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local known, ttl, mjr, default_limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local meta, held, ends, info = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local queue, tickets, wants, gone = KEYS[5], KEYS[6], KEYS[7], KEYS[8]

-- The key's epoch, quarantine end and limit. Creates the key if `create` or if the caller has
-- seen an epoch (then Redis lost it: quarantine). Another epoch than the caller's: quarantine
-- until born + mjr, the time every job of the lost epoch is over.
local function open(create)
  local m = redis.call('HMGET', meta, 'epoch', 'born', 'qu', 'limit')
  local epoch, born, qu = m[1], tonumber(m[2]), tonumber(m[3]) or 0
  local limit = tonumber(m[4]) or default_limit
  if not epoch then
    if not create and known == '' then return false, 0, limit end
    epoch = t[1] .. string.format('.%06d', tonumber(t[2]))
    qu = 0
    if known ~= '' then qu = now + mjr end
    -- fences continue above the lost epoch's: they start at Redis time in microseconds
    redis.call('HSET', meta, 'epoch', epoch, 'born', now, 'qu', qu,
               'fence', t[1] .. string.format('%06d', tonumber(t[2])))
  elseif known ~= '' and known ~= epoch and born + mjr > qu then
    qu = born + mjr
    redis.call('HSET', meta, 'qu', qu)
  end
  return epoch, qu, limit
end

-- Drops leases past their hard end and tickets not refreshed; returns how many went.
local function purge()
  local ended = redis.call('ZRANGEBYSCORE', ends, '-inf', now)
  for _, id in ipairs(ended) do
    redis.call('ZREM', held, id); redis.call('ZREM', ends, id); redis.call('HDEL', info, id)
  end
  local expired = redis.call('ZRANGEBYSCORE', tickets, '-inf', now)
  for _, tk in ipairs(expired) do
    redis.call('ZREM', queue, tk); redis.call('ZREM', tickets, tk); redis.call('HDEL', wants, tk)
  end
  redis.call('ZREMRANGEBYSCORE', gone, '-inf', now)
  return #ended + #expired
end

local function free(limit, qu)
  if qu > now then return 0 end              -- quarantine: fail closed
  if limit <= 0 then return 1000000000 end   -- unlimited
  return limit - redis.call('ZCARD', held)
end

local function want_of(tk)
  local w = redis.call('HGET', wants, tk)
  if not w then return 0, nil end
  local n, ch = string.match(w, '^(%d+)|(.*)$')
  return tonumber(n), ch
end

-- Slots wanted by the first `upto` tickets in line, counted until the sum reaches `cap`.
local function wanted(upto, cap)
  local sum = 0
  if upto <= 0 then return 0 end
  for _, tk in ipairs(redis.call('ZRANGE', queue, 0, upto - 1)) do
    sum = sum + want_of(tk)
    if sum >= cap then return sum end
  end
  return sum
end

-- Publishes a wake-up to each ticket that `f` free slots would serve, oldest first.
local function wake(f)
  if f <= 0 then return end
  for _, tk in ipairs(redis.call('ZRANGE', queue, 0, math.min(f, 100000) - 1)) do
    if f <= 0 then break end
    local n, ch = want_of(tk)
    if ch then redis.call('PUBLISH', ch, tk) end
    f = f - n
  end
end

local function grant(tk, k, holder)
  local out = {}
  for i = 1, k do
    local id = tk .. '.' .. i
    local fence = string.format('%d', redis.call('HINCRBY', meta, 'fence', 1))
    redis.call('ZADD', held, now + ttl, id)
    redis.call('ZADD', ends, math.max(now + mjr, now + ttl), id)
    redis.call('HSET', info, id, fence .. '|' .. now .. '|' .. holder)
    out[#out + 1] = id
    out[#out + 1] = fence
  end
  return out
end

local function dequeue(tk)
  local r = redis.call('ZREM', queue, tk)
  redis.call('ZREM', tickets, tk); redis.call('HDEL', wants, tk)
  return r
end

local function drop(id)
  if redis.call('ZREM', held, id) == 1 then
    redis.call('ZREM', ends, id); redis.call('HDEL', info, id)
    return 1
  end
  return 0
end

-- ms until something time-based may serve a waiter (a hard end, a dead waiter's ticket
-- expiring, the quarantine's end), or -1
local function hint(qu)
  local h = -1
  if qu > now then h = qu - now end
  for _, z in ipairs({ends, tickets}) do
    local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
    if first[2] then
      local e = tonumber(first[2]) - now
      if h < 0 or e < h then h = e end
    end
  end
  return h
end
"""

# ACQUIRE: grant up to n slots to ticket ARGV[5] (oldest tickets first), queue the rest (or,
# for try_acquire, nothing). One ticket stands for all of one process's waiters on the key.
#   ARGV[5] ticket  ARGV[6] n  ARGV[7] holder  ARGV[8] wake channel ('' = try only, never queue)
#   ARGV[9] ticket ttl (ms)  ARGV[10] ask id: this call's lease ids are "<ask>.<i>", so a
#   retried call (same ask id) gets the leases its first try was granted, not new ones
# A ticket served in part keeps waiting for the rest at the END of the line: processes take
# turns, none can starve another by adding waiters.
# Returns {'granted', epoch, now_ms, id1, fence1, ...} | {'queued'|'none'|'gone', epoch, hint_ms}
ACQUIRE = _PRELUDE + r"""
local tk, n, holder, channel, ticket_ttl = ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8], tonumber(ARGV[9])
local ask = ARGV[10]
local epoch, qu, limit = open(true)
local purged = purge()
if redis.call('ZSCORE', gone, tk) then return {'gone', epoch, -1} end
local again = {}
for i = 1, n do  -- grants number their leases from 1: stop at the first missing
  local id = ask .. '.' .. i
  local v = redis.call('HGET', info, id)
  if not v then break end
  redis.call('ZADD', held, now + ttl, id)
  redis.call('ZADD', ends, 'GT', now + ttl, id)
  again[#again + 1] = id
  again[#again + 1] = string.match(v, '^(%d+)|')
end
if #again > 0 then return {'granted', epoch, now, unpack(again)} end
local f = free(limit, qu)
local rank = redis.call('ZRANK', queue, tk)
-- slots left for this ticket once every older ticket has its share (each wants >= 1)
local ahead = rank or redis.call('ZCARD', queue)
local avail = 0
if f > ahead then avail = f - wanted(ahead, f) end
local rest = n
local out = nil
if avail > 0 then
  local k = math.min(n, avail)
  out = grant(ask, k, holder)
  rest = n - k
  if rank then dequeue(tk) end
  if (rank or purged > 0) and f - k > 0 then wake(f - k) end
  rank = nil
elseif purged > 0 then
  wake(f)
end
if rest > 0 and channel ~= '' then
  if not rank then redis.call('ZADD', queue, redis.call('HINCRBY', meta, 'seq', 1), tk) end
  redis.call('HSET', wants, tk, rest .. '|' .. channel)
  redis.call('ZADD', tickets, now + ticket_ttl, tk)
end
if out then return {'granted', epoch, now, unpack(out)} end
if channel == '' then return {'none', epoch, hint(qu)} end
return {'queued', epoch, hint(qu)}
"""

# RENEW: push the expiry of the caller's leases of one key; during a quarantine, re-create the
# ones Redis no longer knows (re-adoption).
#   ARGV[5..] four per lease: lease id, fence, granted_ms, holder
# Returns {epoch, quarantined (0|1), ok1, ok2, ...} (ok: 1 renewed, 0 lost)
RENEW = _PRELUDE + r"""
local epoch, qu, limit = open(false)
if not epoch then
  local out = {'', 0}
  for i = 5, #ARGV, 4 do out[#out + 1] = 0 end
  return out
end
local purged = purge()
local quarantined = qu > now
local out = {epoch, quarantined and 1 or 0}
for i = 5, #ARGV, 4 do
  local id = ARGV[i]
  if redis.call('ZSCORE', held, id) then
    redis.call('ZADD', held, now + ttl, id)
    redis.call('ZADD', ends, 'GT', now + ttl, id)
    out[#out + 1] = 1
  elseif quarantined then
    local fence, granted = ARGV[i + 1], tonumber(ARGV[i + 2])
    redis.call('ZADD', held, now + ttl, id)
    redis.call('ZADD', ends, math.max(granted + mjr, now + ttl), id)
    redis.call('HSET', info, id, fence .. '|' .. ARGV[i + 2] .. '|' .. ARGV[i + 3])
    if tonumber(fence) > tonumber(redis.call('HGET', meta, 'fence')) then
      redis.call('HSET', meta, 'fence', fence)
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if purged > 0 then wake(free(limit, qu)) end
return out
"""

# RELEASE: free the given leases of one key (only ids that exist act) and wake waiters.
#   ARGV[5..] lease ids
# Returns {epoch, released count}
RELEASE = _PRELUDE + r"""
local epoch, qu, limit = open(false)
if not epoch then return {'', 0} end
local n = 0
for i = 5, #ARGV do n = n + drop(ARGV[i]) end
local purged = purge()
if n + purged > 0 then wake(free(limit, qu)) end
return {epoch, n}
"""

# HANDOVER: the caller's jobs under these leases of one key are over and it has more work for the
# key: unless another holder's ticket waits (FIFO between processes comes first), each lease is
# re-granted to the caller at once as a fresh lease (new id, fence, expiry and hard end) instead
# of freed; otherwise they are freed and waiters woken, as RELEASE does.
#   ARGV[5] holder  ARGV[6] wake channel of the caller's own ticket  ARGV[7] ask id  ARGV[8..] ids
# Returns {'granted', epoch, now_ms, id1, fence1, ...} or {'released', epoch, count}
HANDOVER = _PRELUDE + r"""
local holder, channel, ask = ARGV[5], ARGV[6], ARGV[7]
local epoch, qu, limit = open(false)
if not epoch then return {'released', '', 0} end
local n = 0
for i = 8, #ARGV do n = n + drop(ARGV[i]) end
local purged = purge()
local first = redis.call('ZRANGE', queue, 0, 0)[1]
local others = false
if first then
  local _, ch = want_of(first)
  others = ch ~= channel
end
local f = free(limit, qu)
if n > 0 and not others and f > 0 then
  local out = grant(ask, math.min(n, f), holder)
  if purged > 0 then wake(free(limit, qu)) end
  return {'granted', epoch, now, unpack(out)}
end
if n + purged > 0 then wake(f) end
return {'released', epoch, n}
"""

# ABANDON: a ticket nobody waits on any more: tombstone it (an acquire still in flight gets
# nothing), drop it and any lease its last ask got, wake the next waiters.
#   ARGV[5] ticket   ARGV[6] n   ARGV[7] tombstone ttl (ms)   ARGV[8] ask id ('' if none)
# Returns released count
ABANDON = _PRELUDE + r"""
local tk, n, ask = ARGV[5], tonumber(ARGV[6]), ARGV[8]
local epoch, qu, limit = open(false)
if not epoch then return 0 end
redis.call('ZADD', gone, now + tonumber(ARGV[7]), tk)
local changed = dequeue(tk)
local released = 0
if ask ~= '' then
  for i = 1, n do released = released + drop(ask .. '.' .. i) end
end
if changed + released + purge() > 0 then wake(free(limit, qu)) end
return released
"""

# SET_LIMIT: ARGV[5] new limit (<= 0: unlimited). Raising it wakes waiters at once.
# Returns epoch
SET_LIMIT = _PRELUDE + r"""
local epoch, qu = open(true)
local limit = tonumber(ARGV[5])
redis.call('HSET', meta, 'limit', limit)
purge()
wake(free(limit, qu))
return epoch
"""

# STATE: {epoch ('' if the key does not exist), limit, quarantine ms left, tickets,
#         id1, expiry_ms_left1, ends_ms_left1, info1, ...}
STATE = _PRELUDE + r"""
local epoch, qu, limit = open(false)
if not epoch then return {'', limit, 0, 0} end
if purge() > 0 then wake(free(limit, qu)) end
local out = {epoch, limit, math.max(0, qu - now), redis.call('ZCARD', queue)}
local ids = redis.call('ZRANGE', held, 0, -1, 'WITHSCORES')
for i = 1, #ids, 2 do
  local id = ids[i]
  out[#out + 1] = id
  out[#out + 1] = tonumber(ids[i + 1]) - now
  out[#out + 1] = (tonumber(redis.call('ZSCORE', ends, id)) or now) - now
  out[#out + 1] = redis.call('HGET', info, id) or '0|0|'
end
return out
"""


# --- values -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lease:
    """One slot of one key, held by this process.

    `deadline` is local (time.monotonic()): the job must be stopped by then unless a renewal
    pushes it (renew() returns new Lease values). `granted_ms` is Redis time of the grant (kept
    so a lease re-adopted after lost Redis state keeps its hard end). `requested_at` is the
    monotonic time the caller asked, for lease-wait figures."""
    key_id: str
    lease_id: str
    fence: int
    holder: str
    deadline: float
    granted_ms: int = 0
    requested_at: float = 0.0


@dataclass(frozen=True)
class LeaseInfo:
    lease_id: str
    holder: str
    ttl_ms: int       # ms until expiry; <= 0: a zombie, expired that long ago, still counted
    fence: int
    zombie: bool
    ends_ms: int = 0  # ms until it stops counting even unreleased (its hard end)


@dataclass(frozen=True)
class KeyState:
    key_id: str
    limit: int        # <= 0: unlimited
    in_use: int       # leases counted, zombies included
    waiting: int      # tickets in line
    leases: list[LeaseInfo]
    quarantined: bool
    quarantine_ms: int = 0


_MAX_ASK = 1000  # slots one ask may request (bounds the script's loops)


@dataclass
class _Waiter:
    n: int
    requested: float
    future: asyncio.Future


class _Line:
    """This process's waiters for one key, in arrival order, behind one ticket in Redis."""

    def __init__(self) -> None:
        self.waiters: deque[_Waiter] = deque()
        self.event = asyncio.Event()
        self.ticket = secrets.token_hex(8)
        self.driver: asyncio.Task | None = None


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class LeaseBook:
    """This process's view of the mesh-wide leases (one per process; one `holder` name).

    What can go wrong, and what callers see:
    - Redis unreachable: try_acquire/release/renew/state raise RedisError; acquire() keeps its
      place and retries until it is granted or its timeout passes. Nothing is granted meanwhile.
    - A renewal that does not answer within `renew_timeout` raises redis TimeoutError: it is
      not retried here (the deadline logic must see the failure); the client's own reconnect
      retries can only delay it, and the deadline counts from the first send.
    - Lost Redis state: see the module docstring (quarantine); state() reports it.
    """

    def __init__(self, redis: aioredis.Redis, *, holder: str, prefix: str = "im", ttl: float = 10.0,
                 margin: float = 2.0, max_job_runtime: float = 600.0,
                 default_limit: Callable[[str], int] | int = 8, ticket_ttl: float | None = None,
                 renew_timeout: float | None = None) -> None:
        if not 0 < margin < ttl:
            raise ValueError(f"margin must be in (0, ttl): margin={margin}, ttl={ttl}")
        if max_job_runtime < ttl:
            raise ValueError("max_job_runtime must be at least ttl")
        self.redis = redis
        self.holder = holder
        self.prefix = prefix
        self.ttl = ttl
        self.margin = margin
        self.max_job_runtime = max_job_runtime
        self._default_limit = default_limit
        self.ticket_ttl = ticket_ttl if ticket_ttl is not None else ttl
        self.renew_timeout = renew_timeout if renew_timeout is not None else min(1.0, margin / 2)
        self.channel = f"{prefix}:lease:wake:{holder}"
        self._keys_set = f"{prefix}:lease:keys"
        self._epochs: dict[str, str] = {}
        self._waiters: dict[str, asyncio.Event] = {}   # ticket -> its line's wake-up
        self._lines: dict[str, _Line] = {}
        self._closing = False
        self._cleanups: set[asyncio.Task] = set()
        self._listener: asyncio.Task | None = None
        self._subscribed = asyncio.Event()
        self._acquire = redis.register_script(ACQUIRE)
        self._renew = redis.register_script(RENEW)
        self._release = redis.register_script(RELEASE)
        self._handover = redis.register_script(HANDOVER)
        self._abandon_s = redis.register_script(ABANDON)
        self._set_limit = redis.register_script(SET_LIMIT)
        self._state = redis.register_script(STATE)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe to this holder's wake-up channel (returns once subscribed, or after 5 s
        if Redis is down: waiters then fall back to their ticket refreshes)."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name=f"lease-wake-{self.holder}")
        try:
            await asyncio.wait_for(self._subscribed.wait(), 5.0)
        except TimeoutError:
            log.warning("lease wake-ups: not subscribed yet (Redis down?)")

    async def aclose(self) -> None:
        """Stop listening; give pending clean-ups of cancelled acquires a moment to finish."""
        self._closing = True
        drivers = [line.driver for line in self._lines.values() if line.driver is not None]
        for task in drivers:
            task.cancel()
        for task in drivers:
            try:
                await task
            except BaseException:
                pass
        if self._cleanups:
            await asyncio.wait(list(self._cleanups), timeout=2.0)
        for task in [self._listener, *self._cleanups]:
            if task is not None:
                task.cancel()
        for task in [self._listener, *self._cleanups]:
            if task is not None:
                try:
                    await task
                except BaseException:
                    pass
        self._listener = None

    async def __aenter__(self) -> "LeaseBook":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _listen(self) -> None:
        backoff = 0.05
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                backoff = 0.05
                self._wake_all()  # wake-ups may have been missed while we were not subscribed
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        event = self._waiters.get(_text(msg["data"]))
                        if event is not None:
                            event.set()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                metrics.REDIS_UP.set(0)
                log.warning("lease wake-up channel lost (%s); resubscribing", type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    def _wake_all(self) -> None:
        for event in self._waiters.values():
            event.set()

    # -- plumbing ----------------------------------------------------------------------------------
    def _keys(self, key_id: str) -> list[str]:
        if not key_id or any(c in key_id for c in "{}\n") or "|" in key_id:
            raise ValueError(f"bad key id {key_id!r}: give provider:fingerprint")
        base = f"{self.prefix}:lease:{{{key_id}}}"
        return [f"{base}:{part}" for part in
                ("meta", "held", "ends", "info", "queue", "tickets", "wants", "gone")]

    def _limit(self, key_id: str) -> int:
        d = self._default_limit
        return int(d(key_id) if callable(d) else d)

    def _args(self, key_id: str) -> list:
        return [self._epochs.get(key_id, ""), int(self.ttl * 1000), int(self.max_job_runtime * 1000),
                self._limit(key_id)]

    async def _note(self, key_id: str, epoch) -> None:
        """Remember the key's epoch; a change means Redis lost state (or the key is new here)."""
        epoch = _text(epoch)
        if not epoch:
            return
        seen = self._epochs.get(key_id)
        if seen == epoch:
            return
        if seen is not None:
            log.warning("lease state of key %s was lost by Redis (epoch %s -> %s): quarantined",
                        key_id, seen, epoch)
        self._epochs[key_id] = epoch
        await self.redis.sadd(self._keys_set, key_id)

    async def _call(self, script, key_id: str, extra: list):
        try:
            result = await script(keys=self._keys(key_id), args=self._args(key_id) + extra)
        except RedisError:
            metrics.REDIS_UP.set(0)
            raise
        metrics.REDIS_UP.set(1)
        return result

    async def _batch(self, script, calls: list[tuple[str, list]]) -> list:
        """One script call per key in one round trip (a pipeline, not a transaction)."""
        if len(calls) == 1:
            key_id, extra = calls[0]
            return [await self._call(script, key_id, extra)]
        try:
            for attempt in (1, 2):
                pipe = self.redis.pipeline(transaction=False)
                for key_id, extra in calls:
                    keys = self._keys(key_id)
                    pipe.evalsha(script.sha, len(keys), *keys, *self._args(key_id), *extra)
                results = await pipe.execute(raise_on_error=False)
                if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                    # NOSCRIPT means nothing ran (Redis restarted): load and send again
                    await self.redis.script_load(script.script)
                    continue
                for r in results:
                    if isinstance(r, Exception):
                        raise r
                metrics.REDIS_UP.set(1)
                return results
        except RedisError:
            metrics.REDIS_UP.set(0)
            raise
        raise AssertionError("unreachable")

    def _leases(self, key_id: str, result, sent: float, requested: float) -> list[Lease]:
        now_ms = int(result[2])
        deadline = sent + self.ttl - self.margin
        return [Lease(key_id, _text(result[i]), int(result[i + 1]), self.holder, deadline, now_ms, requested)
                for i in range(3, len(result), 2)]

    async def _ask(self, key_id: str, ticket: str, n: int, channel: str, requested: float,
                   ask: str | None = None):
        sent = time.monotonic()
        result = await self._call(self._acquire, key_id, [ticket, n, self.holder, channel,
                                                          int(self.ticket_ttl * 1000), ask or ticket])
        await self._note(key_id, result[1])
        status = _text(result[0])
        if status == "granted":
            return status, self._leases(key_id, result, sent, requested), -1
        return status, [], int(result[2])

    def _abandon(self, key_id: str, ticket: str, n: int, ask: str = "") -> None:
        """In the background (we may be cancelled): drop the ticket and what its ask got."""
        async def run() -> None:
            delay = 0.05
            end = time.monotonic() + max(self.ticket_ttl, 5.0)
            while True:
                try:
                    await self._call(self._abandon_s, key_id, [ticket, n, 60_000, ask])
                    return
                except RedisError:
                    if time.monotonic() + delay > end:
                        # the ticket expires by itself; a lease it got counts until its hard end
                        log.warning("could not abandon a lease ticket on %s; it will expire", key_id)
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
        task = asyncio.create_task(run(), name=f"lease-abandon-{key_id}")
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    # -- the verbs ---------------------------------------------------------------------------------
    async def try_acquire(self, key_id: str, n: int = 1) -> list[Lease]:
        """Up to n leases now, without waiting: only slots no waiter is in line for.
        Raises RedisError if Redis is unreachable (nothing granted)."""
        if n < 1:
            raise ValueError("n must be >= 1")
        requested = time.monotonic()
        ticket = secrets.token_hex(8)
        try:
            _status, leases, _hint = await self._ask(key_id, ticket, n, "", requested)
        except BaseException:
            self._abandon(key_id, ticket, n, ticket)  # the grant may have happened before the error
            raise
        return leases

    async def acquire(self, key_id: str, n: int = 1, *, timeout: float | None = None) -> list[Lease]:
        """Wait in the key's FIFO line until at least one slot is granted; returns 1..n leases.

        This process's waiters on a key line up locally (FIFO) behind one ticket in Redis that
        asks for all of them at once. Raises TimeoutError after `timeout` seconds.
        Cancellation-safe: a cancelled (or timed out) acquire leaves no ticket and no lease
        behind (a grant that raced with the cancel is released). Redis errors while waiting are
        retried (fail closed: nothing is granted meanwhile)."""
        if n < 1:
            raise ValueError("n must be >= 1")
        if self._listener is None:
            await self.start()
        line = self._lines.get(key_id)
        if line is None:
            line = self._lines[key_id] = _Line()
        waiter = _Waiter(n, time.monotonic(), asyncio.get_running_loop().create_future())
        line.waiters.append(waiter)
        line.event.set()
        if line.driver is None:
            line.driver = asyncio.create_task(self._drive(key_id, line), name=f"lease-line-{key_id}")
        try:
            return await asyncio.wait_for(waiter.future, timeout)
        except BaseException:
            f = waiter.future
            if f.done() and not f.cancelled() and f.exception() is None:
                self._release_later(f.result())   # granted while we were being cancelled
            f.cancel()
            line.event.set()                      # the driver asks for less (or leaves the line)
            raise

    def _release_later(self, leases: list[Lease]) -> None:
        async def run() -> None:
            try:
                await self.release(leases)
            except RedisError:
                log.warning("could not release %d leases of a cancelled acquire; they count "
                            "until their hard end", len(leases))
        task = asyncio.create_task(run())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _drive(self, key_id: str, line: "_Line") -> None:
        """Serve this process's line for one key: ask Redis for what the live waiters want,
        hand grants out in FIFO order, wait for a wake-up (or the hint / ticket refresh)."""
        refresh = self.ticket_ttl / 3
        backoff = 0.05
        ask: tuple[str, int] | None = None   # an ask whose answer was lost: retried as is
        queued = False
        self._waiters[line.ticket] = line.event
        try:
            while True:
                live = [w for w in line.waiters if not w.future.done()]
                line.waiters = deque(live)
                if not live and ask is None:
                    return
                line.event.clear()
                if ask is None:
                    ask = (secrets.token_hex(8), min(_MAX_ASK, sum(w.n for w in live)))
                try:
                    status, leases, hint = await self._ask(
                        key_id, line.ticket, ask[1], self.channel, live[0].requested if live else 0.0, ask[0])
                    ask, backoff = None, 0.05
                except RedisError as exc:
                    log.warning("lease acquire on %s: Redis error %s; retrying", key_id, type(exc).__name__)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                    continue
                if status == "gone":        # our ticket was abandoned: take a new one
                    self._waiters.pop(line.ticket, None)
                    line.ticket = secrets.token_hex(8)
                    self._waiters[line.ticket] = line.event
                    continue
                queued = status == "queued" or len(leases) < sum(w.n for w in live)
                if leases:
                    await self._hand_out(line, leases)
                    if not queued:
                        continue
                    hint = -1
                wait = refresh if hint < 0 else min(refresh, hint / 1000 + 0.001)
                try:
                    await asyncio.wait_for(line.event.wait(), wait)
                except TimeoutError:
                    pass
        finally:
            self._waiters.pop(line.ticket, None)
            if queued or ask is not None:
                self._abandon(key_id, line.ticket, ask[1] if ask else 0, ask[0] if ask else "")
            line.driver = None
            if self._lines.get(key_id) is line:
                del self._lines[key_id]
            if self._closing:
                for w in line.waiters:
                    w.future.cancel()
            elif any(not w.future.done() for w in line.waiters):
                # waiters that arrived while we were leaving: a new line serves them
                fresh = self._lines.setdefault(key_id, _Line())
                fresh.waiters.extend(w for w in line.waiters if not w.future.done())
                if fresh.driver is None:
                    fresh.driver = asyncio.create_task(self._drive(key_id, fresh), name=f"lease-line-{key_id}")

    async def _hand_out(self, line: "_Line", leases: list[Lease]) -> None:
        """Grants to waiters in arrival order (each gets up to its n); leftovers go back."""
        rest = list(leases)
        for w in line.waiters:
            if not rest:
                break
            if w.future.done():
                continue
            take, rest = rest[:w.n], rest[w.n:]
            w.future.set_result([replace(lease, requested_at=w.requested) for lease in take])
        if rest:
            await self.release(rest)

    async def release(self, leases: Iterable[Lease]) -> None:
        """Free leases whose jobs are over: one round trip for all keys. Unknown ids are ignored.
        A failed release leaves the leases counted until their hard end (never over the limit)."""
        by_key: dict[str, list[str]] = defaultdict(list)
        for lease in leases:
            by_key[lease.key_id].append(lease.lease_id)
        if not by_key:
            return
        calls = list(by_key.items())
        results = await self._batch(self._release, calls)
        for (key_id, _), r in zip(calls, results):
            await self._note(key_id, r[0])

    async def handover(self, leases: list[Lease]) -> list[Lease]:
        """The jobs under `leases` (all of one key) are over and this process has more work for
        the key: fresh leases in their place if no other process waits for the key (one round
        trip, no wake-up hop), else nothing (they are released, and waiters woken). Raises
        RedisError: then nothing is known; the caller releases them (idempotent)."""
        if not leases:
            return []
        key_id = leases[0].key_id
        if any(x.key_id != key_id for x in leases):
            raise ValueError("handover takes the leases of one key")
        sent = time.monotonic()
        result = await self._call(self._handover, key_id,
                                  [self.holder, self.channel, secrets.token_hex(8), *(x.lease_id for x in leases)])
        await self._note(key_id, result[1])
        if _text(result[0]) != "granted":
            return []
        return self._leases(key_id, result, sent, sent)

    async def renew(self, leases: Iterable[Lease]) -> tuple[list[Lease], list[Lease]]:
        """Renew leases in one round trip: (renewed, with pushed deadlines; lost, the very
        objects passed in). A lost lease's job must stop. Raises redis TimeoutError after
        `renew_timeout` or another RedisError: then nothing is known, deadlines stand."""
        by_key: dict[str, list[Lease]] = defaultdict(list)
        for lease in leases:
            by_key[lease.key_id].append(lease)
        if not by_key:
            return [], []
        calls = []
        for key_id, group in by_key.items():
            extra: list = []
            for lease in group:
                extra += [lease.lease_id, lease.fence, lease.granted_ms, lease.holder]
            calls.append((key_id, extra))
        sent = time.monotonic()
        try:
            results = await asyncio.wait_for(self._batch(self._renew, calls), self.renew_timeout)
        except TimeoutError:
            metrics.REDIS_UP.set(0)
            raise RedisTimeoutError(f"lease renewal took over {self.renew_timeout} s") from None
        deadline = sent + self.ttl - self.margin
        renewed: list[Lease] = []
        lost: list[Lease] = []
        for (key_id, group), r in zip(by_key.items(), results):
            await self._note(key_id, r[0])
            for lease, ok in zip(group, r[2:]):
                if int(ok):
                    renewed.append(replace(lease, deadline=max(lease.deadline, deadline)))
                else:
                    lost.append(lease)
        return renewed, lost

    async def set_limit(self, key_id: str, limit: int) -> None:
        """Set the key's limit mesh-wide (every grant reads it: effective at once). Raising it
        wakes waiters; lowering it grants nothing until in-use falls below it. <= 0: unlimited."""
        epoch = await self._call(self._set_limit, key_id, [int(limit)])
        await self._note(key_id, epoch)

    async def state(self, key_id: str) -> KeyState:
        r = await self._call(self._state, key_id, [])
        await self._note(key_id, r[0])
        leases = []
        for i in range(4, len(r), 4):
            fence, _granted, holder = _text(r[i + 3]).split("|", 2)
            ttl_ms = int(r[i + 1])
            leases.append(LeaseInfo(_text(r[i]), holder, ttl_ms, int(fence), ttl_ms <= 0, int(r[i + 2])))
        return KeyState(key_id=key_id, limit=int(r[1]), in_use=len(leases), waiting=int(r[3]),
                        leases=leases, quarantined=int(r[2]) > 0, quarantine_ms=int(r[2]))

    async def known_keys(self) -> list[str]:
        return sorted(_text(k) for k in await self.redis.smembers(self._keys_set))
