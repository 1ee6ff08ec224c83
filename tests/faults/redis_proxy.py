"""A fault-injection TCP proxy between a process under test and Redis.

What it is for
--------------
The fault suite proves that nothing accepted is lost when Redis fails at *any* command on the
gateway's paths. `RedisProxy` listens on 127.0.0.1 between the gateway (or any Redis client)
and the suite's real redis-server. It parses RESP both ways, command by command (pipelines
included) and reply by reply, so it knows which reply answers which command. It records every
command with a stable *label* and can act at a chosen one:

    error       answer it with `-ERR injected ...` instead of forwarding it, in its place among
                the replies; the rest of a pipeline is forwarded and answered in order. Inside
                MULTI the transaction then fails with EXECABORT, as after a real queueing error.
    drop        close both sides of the connection just before forwarding it.
    drop_after  forward it; when its reply arrives, close both sides before the client sees it
                (the command took effect, the client cannot know).
    delay       hold it, and everything after it on that connection, for `seconds`.
    blackhole   from it on, pass nothing either way on that connection (no close) until the rule
                is cleared; then the command is forwarded and traffic flows again.
    callback    forward it; when its reply arrives call `fn(command)` in the proxy thread, then
                pass the reply on (`reply="pass"`) or close the connection instead
                (`reply="drop"`). `crash_after(match, pid)` SIGKILLs a process at that point.

and, for the whole proxy: `refuse_new()` / `accept_new()`, `pause()` / `resume()`, `cut_all()`.

    with RedisProxy(redis_server.port) as proxy:          # or proxy.start() ... proxy.stop()
        proxy.register_scripts({"FINISH": batches._FINISH})
        start the gateway with IMAGEMESH_REDIS_URL=proxy.url
        rule = proxy.inject("FINISH", "error", nth=2)      # the 2nd FINISH from now on fails
        ...
        assert rule.fired, "the path changed: the injection point was never reached"

A sweep
-------
Run the scenario once through a proxy without rules; `proxy.commands()` lists every command in
order. Each (label, occurrence) is an injection point: for the k-th command whose label is L,
run the scenario again on a fresh mesh with `inject(L, "error", nth=k)` (or
`crash_after(L, gateway_pid, nth=k)`; `nth` counts from when the rule is added), check the
invariants, and check `rule.fired`. Matching a label rather than a sequence number keeps the
point stable when unrelated commands interleave differently. Things that make runs differ:
- timers: redis-py's health-check PING, lease renewals, polling XREADs come as time allows,
  so their occurrence counts vary; pick points on the batch's own path, or match with a
  predicate on `Command.args`;
- the script cache: the first call of a script on a Redis that lacks it is EVALSHA (NOSCRIPT),
  SCRIPT LOAD, EVALSHA again (two occurrences of its label); `SCRIPT FLUSH` (or load every
  script) before each run so that all runs start alike;
- retries: redis-py retries a command that failed with a connection error (3 times by
  default), so after `drop` or `drop_after` the same command may come again (the recording
  shows it; `times=` makes a fault persist), and a `drop_after` write may be applied twice.

Labels
------
`command_label()` names a command the same way in every run: a script call (EVALSHA, EVAL) by
the script's registered name (`FINISH`), a SCRIPT LOAD as `SCRIPT LOAD FINISH`, a command with
a subcommand by both (`CLIENT SETNAME`, `XGROUP CREATE im:q:{...}`), XREAD/XREADGROUP and the
(un)subscribe family by all their streams/channels, a keyless command (PING, MULTI) by its
name, and any other by its name and first argument. Keys and channels go through
`normalise_key()`: the contents of every hash tag `{...}` become `...`, and a `:`-separated
part outside hash tags that holds a digit becomes `*` (`im:{b7f3}:meta` -> `im:{...}:meta`,
`im:budget:{k}:20250101` -> `im:budget:{...}:*`). Unknown scripts are named by their sha1
(`EVALSHA 1f0c2d3e4a5b`), which is stable too.

Bounds
------
Each connection reads 64 KiB at a time and waits for the other side to take what it forwarded
before reading more, so a slow client stops the reading from Redis (and a slow Redis stops the
reading from the client) instead of growing a buffer. A command is held whole before it is
forwarded (the proxy must see it to decide); replies stream through unless a `drop_after` /
`callback` rule holds one until it is complete. A command or held reply larger than
`max_message_bytes` (256 MiB) closes the connection. The recording keeps the last
`max_recorded` commands (100,000; older ones are dropped and counted in `dropped`), each with
its first 64 arguments cut at 512 bytes; AUTH, HELLO, MIGRATE, CONFIG and ACL keep no arguments
beyond the subcommand, so passwords are never recorded.

What it cannot do
-----------------
- Plain TCP to one upstream only: no TLS, no Redis Cluster (a MOVED reply sends the client to
  the real server, past the proxy).
- Once a connection subscribes (SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE), runs MONITOR or CLIENT
  REPLY, Redis sends messages that answer no command: from there on every server message
  passes on as it comes, unpaired. Commands are still recorded and rules still apply; an
  `error` answer goes out after the replies owed to commands sent before the switch, and
  `drop_after` / `callback` act right after the command is forwarded. RESET does not switch the
  connection back. Replication (SYNC, PSYNC) is not RESP and is not supported.
- RESP3 (`HELLO 3`) passes through: pushes are told apart from replies, attributes are kept
  with their reply; streamed RESP3 aggregates (`*?`, `$?`), which Redis 7 never sends, close the
  connection.
- It acts between whole commands and replies: it cannot corrupt bytes or cut a reply in half.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import itertools
import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

log = logging.getLogger(__name__)

ACTIONS = ("error", "drop", "drop_after", "delay", "blackhole", "callback")
DEFAULT_ERROR = "ERR injected by RedisProxy"

_READ_SIZE = 64 * 1024
_KEEP_ARGS = 64
_KEEP_BYTES = 512
_KEYLESS = frozenset(
    "PING ECHO MULTI EXEC DISCARD UNWATCH SELECT HELLO AUTH INFO TIME DBSIZE FLUSHALL FLUSHDB "
    "QUIT RESET WAIT WAITAOF SWAPDB SAVE BGSAVE BGREWRITEAOF LASTSAVE ROLE SHUTDOWN READONLY "
    "READWRITE RANDOMKEY SCAN KEYS MONITOR SYNC PSYNC REPLICAOF SLAVEOF FAILOVER LOLWUT".split())
_WITH_SUBCOMMAND = frozenset(
    "CLIENT CONFIG XGROUP XINFO SCRIPT OBJECT MEMORY COMMAND FUNCTION PUBSUB ACL CLUSTER DEBUG "
    "MODULE LATENCY SLOWLOG".split())
_SUBCOMMAND_THEN_KEY = frozenset("XGROUP XINFO OBJECT MEMORY".split())
_ALL_ARGS = frozenset("SUBSCRIBE PSUBSCRIBE SSUBSCRIBE UNSUBSCRIBE PUNSUBSCRIBE SUNSUBSCRIBE".split())
_SCRIPT_CALLS = frozenset("EVALSHA EVALSHA_RO EVAL EVAL_RO".split())
_NOT_NAME_AND_KEY = _KEYLESS | _WITH_SUBCOMMAND | _ALL_ARGS | _SCRIPT_CALLS | {"XREAD", "XREADGROUP"}
_SECRET = frozenset("AUTH HELLO MIGRATE CONFIG ACL".split())
# After these the server sends messages that answer no command (pub/sub, MONITOR) or answers
# some commands with nothing (CLIENT REPLY OFF|SKIP): replies then pass on unpaired.
_UNPAIRED = frozenset("SUBSCRIBE PSUBSCRIBE SSUBSCRIBE MONITOR".split())
_WATCHED = _UNPAIRED | {"MULTI", "EXEC", "DISCARD", "CLIENT"}
_DISCARD = b"*1\r\n$7\r\nDISCARD\r\n"
_EXECABORT = b"-EXECABORT Transaction discarded because of previous errors.\r\n"
_PUSH = ord(">")


# -- labels ------------------------------------------------------------------------------------

_HASH_TAG = re.compile(r"\{[^{}]*\}")
_DIGIT = re.compile(r"\d")


@functools.lru_cache(maxsize=65536)
def normalise_key(key: str | bytes) -> str:
    """A key or channel with its volatile parts replaced, the same in every run.

    The contents of each hash tag become `...` (`im:{b7f3...}:meta` -> `im:{...}:meta`), and
    each `:`-separated part outside hash tags that contains a digit becomes `*` (ids, pids,
    dates, counters: `im:lease:wake:gw-host-41-ab12` -> `im:lease:wake:*`). Two keys that
    differ only there get the same label, which is what makes labels comparable across runs.
    """
    if isinstance(key, bytes):
        key = key.decode("utf-8", "backslashreplace")
    key = _HASH_TAG.sub("{...}", key)
    return ":".join("*" if _DIGIT.search(part) else part for part in key.split(":"))


def _text(arg: bytes) -> str:
    return arg.decode("utf-8", "backslashreplace")


def _script(kind: str, sha: str, scripts: Mapping[str, str]) -> str:
    return scripts.get(sha) or f"{kind} {sha[:12]}"


def command_label(args: Sequence[bytes], scripts: Mapping[str, str] | None = None) -> str:
    """The stable label of one command (`args`: bytes as sent, name first), see the module
    docstring. `scripts` maps a lower-case sha1 hex digest to a script's name."""
    return _label(_text(args[0]).upper(), args, scripts or {}) if args else ""


def _label(name: str, args: Sequence[bytes], scripts: Mapping[str, str]) -> str:
    n = len(args)
    if n > 1 and name not in _NOT_NAME_AND_KEY:     # most commands: the name and the first key
        return f"{name} {normalise_key(args[1])}"
    if n == 1 or name in _KEYLESS:
        return name
    if name in ("EVALSHA", "EVALSHA_RO"):
        return _script(name, _text(args[1]).lower(), scripts)
    if name in ("EVAL", "EVAL_RO"):
        return _script(name, hashlib.sha1(args[1]).hexdigest(), scripts)
    if name in _WITH_SUBCOMMAND:
        sub = _text(args[1]).upper()
        if name == "SCRIPT" and sub == "LOAD" and n > 2:
            sha = hashlib.sha1(args[2]).hexdigest()
            return f"SCRIPT LOAD {scripts.get(sha) or sha[:12]}"
        if name in _SUBCOMMAND_THEN_KEY and n > 2:
            return f"{name} {sub} {normalise_key(bytes(args[2]))}"
        return f"{name} {sub}"
    if name in ("XREAD", "XREADGROUP"):
        upper = [a.upper() for a in args]
        rest = args[upper.index(b"STREAMS") + 1:] if b"STREAMS" in upper else []
        keys = rest[:len(rest) // 2]
        return " ".join([name, *dict.fromkeys(normalise_key(bytes(k)) for k in keys)])
    return " ".join([name, *dict.fromkeys(normalise_key(bytes(k)) for k in args[1:])])   # _ALL_ARGS


@dataclass(slots=True)
class Command:
    """One command as the proxy read it."""

    seq: int                  # order of reading, across all connections, from 1
    conn: int                 # the connection's id, in order of accept, from 1
    name: str                 # upper case: "EVALSHA"
    label: str                # stable across runs: see command_label()
    args: tuple[bytes, ...]   # the first 64 arguments (name included), each cut at 512 bytes
    at: float                 # time.monotonic() when it was read
    action: str | None = None  # what a rule did to it, if anything


# -- rules -------------------------------------------------------------------------------------

class Rule:
    """One injection, made by `RedisProxy.inject()`.

    It fires on the `nth` matching command counted from when it was added, and on the
    `times - 1` matching commands after that (`times=None`: on every one from the nth on).
    `hits` lists the commands it acted on; for `drop_after` and `callback` a command is added
    when its reply arrived and the action was taken, so a connection lost before the reply
    leaves no hit. When several rules would fire on one command, the first added acts; the
    others count it as seen and stay due (they fire on the next match).
    """

    def __init__(self, proxy: "RedisProxy", match: str | Callable[[Command], bool], action: str, *,
                 nth: int, times: int | None, seconds: float, fn: Callable[[Command], object] | None,
                 reply: str, message: str) -> None:
        self._proxy = proxy
        self.match = match
        self.action = action
        self.nth = nth
        self.times = times
        self.seconds = seconds
        self.fn = fn
        self.reply = reply
        self.error = b"-" + _sanitise(message) + b"\r\n"
        self.seen = 0
        self.hits: list[Command] = []
        self._taken = 0
        self._hit = threading.Event()

    def __repr__(self) -> str:
        return f"Rule({self.match!r}, {self.action!r}, nth={self.nth}, seen={self.seen}, hits={len(self.hits)})"

    @property
    def fired(self) -> bool:
        return bool(self.hits)

    @property
    def fired_at(self) -> Command | None:
        return self.hits[0] if self.hits else None

    def wait(self, timeout: float) -> bool:
        """Block until the rule has acted once (True), or `timeout` seconds passed (False)."""
        return self._hit.wait(timeout)

    def clear(self) -> None:
        """Disarm the rule; connections it black-holed flow again."""
        self._proxy._remove(self)

    def _consider(self, cmd: Command, may_fire: bool) -> bool:
        try:
            matched = self.match == cmd.label if isinstance(self.match, str) else bool(self.match(cmd))
        except Exception:
            log.exception("rule %r: the match function raised; taken as no match", self)
            return False
        if not matched:
            return False
        self.seen += 1
        if not may_fire or self.seen < self.nth or (self.times is not None and self._taken >= self.times):
            return False
        self._taken += 1
        return True

    def _acted(self, cmd: Command) -> None:
        cmd.action = self.action
        self.hits.append(cmd)
        self._hit.set()


def _sanitise(message: str) -> bytes:
    return message.encode("ascii", "backslashreplace").replace(b"\r", b" ").replace(b"\n", b" ")


# -- the wire ----------------------------------------------------------------------------------

class _ProtocolError(Exception):
    pass


class _CommandReader:
    """Splits the client's bytes into commands, keeping its place in an incomplete one."""

    def __init__(self) -> None:
        self.args: list[bytes] | None = None
        self.left = 0
        self.pos = 0

    def shift(self, n: int) -> None:
        self.pos -= n

    def next(self, buf: bytearray, start: int) -> tuple[list[bytes], int] | None:
        """The command at `buf[start:]` and where it ends, or None until it is complete."""
        if self.args is None:
            if start >= len(buf):
                return None
            if buf[start] != 42:  # not '*': an inline command (telnet style), one line
                eol = buf.find(b"\n", start)
                return None if eol < 0 else (bytes(buf[start:eol]).split(), eol + 1)
            eol = buf.find(b"\r\n", start)
            if eol < 0:
                return None
            self.left = int(buf[start + 1:eol])
            self.args, self.pos = [], eol + 2
        args, pos, size = self.args, self.pos, len(buf)
        while self.left > 0:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            if buf[pos] != 36:  # '$'
                raise _ProtocolError(f"expected a bulk string in a command, got {bytes(buf[pos:pos + 20])!r}")
            end = eol + 2 + int(buf[pos + 1:eol])
            if end + 2 > size:
                break
            args.append(bytes(buf[eol + 2:end]))
            pos = end + 2
            self.left -= 1
        else:
            self.args = None
            return args, pos
        self.pos = pos
        return None


class _ReplyScanner:
    """Finds where each RESP2/RESP3 message from the server ends, without holding it whole."""

    def __init__(self) -> None:
        self.pos = 0            # everything before it has been scanned
        self.stack: list[int] = []   # elements still due in each open aggregate
        self.bulk = 0           # payload bytes (and CRLF) still due in the open bulk string
        self.top: int | None = None  # type byte of the message being scanned
        self.last_type = 0      # type byte of the last complete message

    def shift(self, n: int) -> None:
        self.pos -= n

    def next(self, buf: bytearray) -> int | None:
        """Where the next complete message ends, or None (with the scan's place kept)."""
        pos, size, stack = self.pos, len(buf), self.stack
        while True:
            if self.bulk:
                take = min(self.bulk, size - pos)
                pos += take
                self.bulk -= take
                if self.bulk:
                    self.pos = pos
                    return None
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    self.pos = pos
                    return None
                kind = buf[pos]
                if self.top is None:
                    self.top = kind
                try:
                    if kind in b"$=!":                   # bulk, verbatim, bulk error
                        length = int(buf[pos + 1:eol])
                        pos = eol + 2
                        if length >= 0:
                            self.bulk = length + 2
                            continue
                    elif kind in b"*~>%|":                # array, set, push, map, attribute
                        count = int(buf[pos + 1:eol])
                        count = count * 2 if kind == 37 else count * 2 + 1 if kind == 124 else count
                        pos = eol + 2
                        if count > 0:
                            stack.append(count)
                            continue
                    elif kind in b"+-:_,#(":              # the one-line types
                        pos = eol + 2
                    else:
                        raise _ProtocolError(f"not RESP: {bytes(buf[pos:pos + 20])!r}")
                except ValueError:
                    raise _ProtocolError(f"unsupported RESP header {bytes(buf[pos:eol])!r}") from None
            # one element is complete: close the aggregates it completes
            while stack:
                stack[-1] -= 1
                if stack[-1]:
                    break
                stack.pop()
            else:
                self.pos = pos
                self.last_type, self.top = self.top, None
                return pos


@dataclass(slots=True)
class _Turn:
    """An entry in a connection's reply order other than a plain forwarded command."""

    kind: str                 # "inject" | "replace" | "after"
    cmd: Command | None = None
    payload: bytes = b""      # the reply to send (inject, replace)
    rule: Rule | None = None  # the rule to act on when the reply arrives (after)


class _Link:
    """One client connection and its connection to Redis, pumped by two tasks."""

    def __init__(self, proxy: "RedisProxy", cid: int, client: tuple, upstream: tuple) -> None:
        self.proxy = proxy
        self.id = cid
        self.c_r, self.c_w = client
        self.u_r, self.u_w = upstream
        self.pending: collections.deque = collections.deque()  # Command | _Turn, in reply order
        self.cbuf = bytearray()           # client bytes not yet forwarded (an unfinished command)
        self.sbuf = bytearray()           # server bytes not yet passed on
        self.scanner = _ReplyScanner()
        self.unpaired = False             # replies no longer answer commands one to one
        self.multi = False
        self.aborted = False              # an error was injected inside MULTI
        self.blackhole: Rule | None = None
        self.closed = False
        self.tasks: list[asyncio.Task] = []

    # -- life --------------------------------------------------------------------------------
    async def run(self) -> None:
        self.tasks = [asyncio.create_task(self._pump(self._commands())),
                      asyncio.create_task(self._pump(self._replies()))]
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.close(abort=True)

    async def _pump(self, coro) -> None:
        try:
            await coro
        except OSError:                    # a reset, a broken pipe: the peer is gone
            self.close(abort=True)
        except (_ProtocolError, ValueError) as e:
            log.warning("redis proxy: connection %d closed: %s", self.id, e)
            self.close(abort=True)

    def close(self, abort: bool = False) -> None:
        """Close both sides: `abort` resets them at once, else what was written goes out first."""
        if self.closed:
            return
        self.closed = True
        for w in (self.c_w, self.u_w):
            if abort:
                w.transport.abort()
            else:
                w.close()
        me = asyncio.current_task()
        for t in self.tasks:
            if t is not me:
                t.cancel()
        self.proxy._links.pop(self.id, None)

    def _blocked(self) -> bool:
        return self.blackhole is not None or self.proxy._paused

    async def _unblocked(self) -> None:
        while not self.closed and self._blocked():
            await self.proxy._changed.wait()

    # -- client -> server --------------------------------------------------------------------
    async def _commands(self) -> None:
        buf, reader, limit = self.cbuf, _CommandReader(), self.proxy.max_message_bytes
        while not self.closed:
            data = await self.c_r.read(_READ_SIZE)
            if not data:
                if not self.closed and self.u_w.can_write_eof():
                    self.u_w.write_eof()   # Redis answers what it has, then closes: _replies ends
                return
            buf += data
            start = sent = 0               # buf[sent:start] is parsed, to be forwarded as is
            while (got := reader.next(buf, start)) is not None:
                args, end = got
                if not args:               # an empty inline line: Redis ignores it too
                    start = end
                    continue
                if self._blocked():
                    self.u_w.write(buf[sent:start])
                    sent = start
                    await self._unblocked()
                if self.closed:
                    return
                cmd = self.proxy._record(self.id, args)
                rule = self.proxy._rule_for(cmd)
                if rule is None and cmd.name not in _WATCHED:
                    if not self.unpaired:
                        self.pending.append(cmd)
                    start = end
                    continue
                self.u_w.write(buf[sent:start])
                await self._special(cmd, rule, buf[start:end])
                if self.closed:
                    return
                start = sent = end
            self.u_w.write(buf[sent:start])
            del buf[:start]
            reader.shift(start)
            if len(buf) > limit:
                raise _ProtocolError(f"a command over max_message_bytes ({limit})")
            if self.pending and type(self.pending[0]) is _Turn and not self._blocked():
                self._deliver()            # injected answers at the head go out now
            await self.u_w.drain()

    async def _special(self, cmd: Command, rule: Rule | None, raw: bytes) -> None:
        """Forward, answer or hold one command under `rule`, tracking MULTI and unpairing."""
        action = rule.action if rule else None
        if action == "error":
            rule._acted(cmd)
            if cmd.name == "EXEC" and self.multi:    # end the transaction without running it
                self.u_w.write(_DISCARD)
                self.multi = self.aborted = False
                self._expect(_Turn("replace", cmd, rule.error))
            else:
                self.aborted = self.multi
                self._answer(rule.error)
            return
        if action == "drop":
            rule._acted(cmd)
            self.close()
            return
        if action == "delay":
            rule._acted(cmd)
            await self.u_w.drain()
            await asyncio.sleep(rule.seconds)
        elif action == "blackhole":
            rule._acted(cmd)
            self.blackhole = rule
            await self._unblocked()
        if self.closed:
            return
        if cmd.name == "EXEC" and self.aborted:
            self.u_w.write(_DISCARD)
            self.multi = self.aborted = False
            self._expect(_Turn("replace", cmd, _EXECABORT))
            return
        self.u_w.write(raw)
        if cmd.name == "MULTI":
            self.multi = True
        elif cmd.name in ("EXEC", "DISCARD"):
            self.multi = self.aborted = False
        if cmd.name in _UNPAIRED or (cmd.name == "CLIENT" and len(cmd.args) > 1 and cmd.args[1].upper() == b"REPLY"):
            self.unpaired = True
        if action in ("drop_after", "callback"):
            if self.unpaired:              # no reply to wait for: act now
                await self.u_w.drain()
                self._after(cmd, rule, None)
            else:
                self._expect(_Turn("after", cmd, rule=rule))
        elif not self.unpaired:
            self._expect(cmd)

    def _expect(self, entry) -> None:
        if not self.unpaired:
            self.pending.append(entry)

    def _answer(self, reply: bytes) -> None:
        self.pending.append(_Turn("inject", payload=reply))

    # -- server -> client --------------------------------------------------------------------
    async def _replies(self) -> None:
        while not self.closed:
            data = await self.u_r.read(_READ_SIZE)
            if self._blocked():
                await self._unblocked()
            if self.closed:
                return
            if not data:
                self._deliver()
                if not self.closed:
                    self.c_w.write(self.sbuf)   # an unfinished reply: as much as Redis sent
                    self.close()
                return
            self.sbuf += data
            self._deliver()
            if len(self.sbuf) > self.proxy.max_message_bytes:
                raise _ProtocolError(f"a held reply over max_message_bytes ({self.proxy.max_message_bytes})")
            await self.c_w.drain()

    def _deliver(self) -> None:
        """Pass on every reply now due, in the clients' order, with injected ones in place."""
        buf, scanner, pending = self.sbuf, self.scanner, self.pending
        out = bytearray()
        done = 0                           # buf[:done] is handled
        while not self.closed:
            while pending and type(pending[0]) is _Turn and pending[0].kind == "inject":
                out += pending.popleft().payload     # its turn has come: no server reply to wait for
            end = scanner.next(buf)
            if end is None:
                if not (pending and type(pending[0]) is _Turn):   # "after" and "replace" hold it
                    out += buf[done:scanner.pos]     # else stream the unfinished reply through
                    done = scanner.pos
                break
            if scanner.last_type == _PUSH or not pending:   # RESP3 push, or nothing asked
                out += buf[done:end]
                done = end
                continue
            entry = pending.popleft()
            if type(entry) is _Turn:
                if entry.kind == "replace":
                    out += entry.payload
                    done = end
                    continue
                self.c_w.write(out)        # kind "after": the replies before it go out first
                out = bytearray()
                if self._after(entry.cmd, entry.rule, buf[done:end]):
                    done = end
                    continue
                return
            out += buf[done:end]
            done = end
        if self.closed:
            return
        del buf[:done]
        scanner.shift(done)
        if out:
            self.c_w.write(out)

    def _after(self, cmd: Command, rule: Rule, reply: bytes | None) -> bool:
        """Act when `cmd`'s reply arrived (None: unknowable); True if the reply goes on."""
        rule._acted(cmd)
        if rule.action == "callback":
            try:
                rule.fn(cmd)
            except Exception:
                log.exception("redis proxy: the callback of %r raised", rule)
            if rule.reply == "pass":
                if reply is not None and not self.closed:
                    self.c_w.write(reply)
                return True
        self.close()
        return False


# -- the proxy ---------------------------------------------------------------------------------

class RedisProxy:
    """A RESP-aware TCP proxy to the Redis on `upstream_port`, with recording and fault rules.

    It runs in its own thread with its own event loop, so clients may live in another process
    or in the caller's event loop. Every method is safe to call from any thread.
    """

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1",
                 max_recorded: int = 100_000, max_message_bytes: int = 256 * 1024 * 1024,
                 connect_timeout: float = 5.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.max_message_bytes = max_message_bytes
        self.connect_timeout = connect_timeout
        self.port: int | None = None
        self.dropped = 0                  # commands pushed out of the recording by newer ones
        self._lock = threading.Lock()
        self._recorded: collections.deque[Command] = collections.deque(maxlen=max_recorded)
        self._rules: list[Rule] = []
        self._scripts: dict[str, str] = {}
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)
        self._links: dict[int, _Link] = {}
        self._handlers: set[asyncio.Task] = set()
        self._refusing = False
        self._paused = False
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._changed: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "RedisProxy":
        """Listen on 127.0.0.1 on a free port (`port`, `url`)."""
        if self._thread is not None:
            return self
        self._stopping = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="redis-proxy", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection (reset); bounded: at most about 2 × `timeout`."""
        if self._thread is None:
            return
        loop, thread = self._loop, self._thread
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            self._thread = None

    def __enter__(self) -> "RedisProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _main(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for t in tasks:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    async def _listen(self) -> None:
        self._changed = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        self._stopping = True
        self._server.close()
        for link in list(self._links.values()):
            link.close(abort=True)
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=2.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing or self._stopping:
            writer.transport.abort()
            return
        try:
            upstream = await asyncio.wait_for(asyncio.open_connection(*self.upstream), self.connect_timeout)
        except (OSError, asyncio.TimeoutError):
            writer.transport.abort()       # as if Redis were down: the client sees a reset
            return
        if self._stopping:
            writer.transport.abort()
            upstream[1].transport.abort()
            return
        link = _Link(self, next(self._ids), (reader, writer), upstream)
        self._links[link.id] = link
        me = asyncio.current_task()
        self._handlers.add(me)
        try:
            await link.run()
        except asyncio.CancelledError:
            pass                           # the loop is stopping; asyncio's callback would log it
        finally:
            self._handlers.discard(me)

    def _call(self, fn: Callable, *args):
        """Run `fn(*args)` in the proxy's thread and return its result."""
        if self._thread is None:
            raise RuntimeError("the proxy is not started")
        if threading.current_thread() is self._thread:
            return fn(*args)

        async def run():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(5)

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    # -- recording -----------------------------------------------------------------------------
    def register_scripts(self, scripts: Mapping[str, str | bytes]) -> None:
        """Name Lua scripts by their text ({"FINISH": text}): their calls get that label."""
        self.name_scripts({hashlib.sha1(t.encode() if isinstance(t, str) else t).hexdigest(): name
                           for name, t in scripts.items()})

    def name_scripts(self, names: Mapping[str, str]) -> None:
        """Name Lua scripts by their sha1 ({sha: "FINISH"})."""
        with self._lock:
            self._scripts = {**self._scripts, **{sha.lower(): name for sha, name in names.items()}}

    def commands(self) -> list[Command]:
        """Every command recorded (the newest `max_recorded`), in the order read."""
        with self._lock:
            return list(self._recorded)

    def clear(self) -> None:
        """Forget the recording (rules keep their counts)."""
        with self._lock:
            self._recorded.clear()
            self.dropped = 0

    def _record(self, cid: int, args: list[bytes]) -> Command:
        name = _text(args[0]).upper()
        label = _label(name, args, self._scripts)
        if name in _SECRET:
            kept = tuple(args[:1] if name != "CONFIG" and name != "ACL" else args[:2])
        elif len(args) <= _KEEP_ARGS and max(map(len, args)) <= _KEEP_BYTES:
            kept = tuple(args)
        else:
            kept = tuple(a[:_KEEP_BYTES] for a in args[:_KEEP_ARGS])
        cmd = Command(next(self._seq), cid, name, label, kept, time.monotonic())
        with self._lock:
            if len(self._recorded) == self._recorded.maxlen:
                self.dropped += 1
            self._recorded.append(cmd)
        return cmd

    # -- rules ---------------------------------------------------------------------------------
    def inject(self, match: str | Callable[[Command], bool], action: str, *, nth: int = 1,
               times: int | None = 1, seconds: float = 0.0, fn: Callable[[Command], object] | None = None,
               reply: str = "pass", message: str = DEFAULT_ERROR) -> Rule:
        """Act on commands matching `match` (a label, or a predicate on the `Command`).

        `action` is one of ACTIONS (see the module docstring). `nth` / `times`: which matching
        commands, counted from now (see `Rule`). `seconds` is for "delay"; `fn` and `reply`
        ("pass" | "drop") for "callback"; `message` is the error line for "error" (RESP: the
        first word is the error code, e.g. "LOADING Redis is loading").
        """
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
        if nth < 1 or (times is not None and times < 1):
            raise ValueError("nth and times count from 1")
        if action == "delay" and not seconds > 0:
            raise ValueError("a delay needs seconds > 0")
        if action == "callback" and fn is None:
            raise ValueError("a callback needs fn")
        if reply not in ("pass", "drop"):
            raise ValueError(f"reply must be 'pass' or 'drop', not {reply!r}")
        rule = Rule(self, match, action, nth=nth, times=times, seconds=seconds, fn=fn, reply=reply,
                    message=message)
        with self._lock:
            self._rules = [*self._rules, rule]
        return rule

    def crash_after(self, match: str | Callable[[Command], bool], pid: int, *, nth: int = 1) -> Rule:
        """SIGKILL `pid` once the matching command took effect in Redis, before its reply is
        passed on (the connection is then closed, the reply never delivered)."""
        def kill(cmd: Command) -> None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.inject(match, "callback", nth=nth, fn=kill, reply="drop")

    def clear_rules(self) -> None:
        """Disarm every rule; black-holed connections flow again."""
        for rule in list(self._rules):
            rule.clear()

    def _remove(self, rule: Rule) -> None:
        with self._lock:
            self._rules = [r for r in self._rules if r is not rule]
        if self._thread is not None:
            self._call(self._release, rule)

    def _release(self, rule: Rule) -> None:
        for link in self._links.values():
            if link.blackhole is rule:
                link.blackhole = None
        self._notify()

    def _rule_for(self, cmd: Command) -> Rule | None:
        rules = self._rules               # replaced, never changed in place: no lock needed
        chosen = None
        for rule in rules:
            if rule._consider(cmd, chosen is None):
                chosen = rule
        return chosen

    # -- whole-proxy switches ------------------------------------------------------------------
    def refuse_new(self) -> None:
        """Close every new connection as soon as it is accepted (until `accept_new()`)."""
        self._refusing = True

    def accept_new(self) -> None:
        self._refusing = False

    def pause(self) -> None:
        """Black-hole every connection, current and new (until `resume()`)."""
        self._call(self._set_paused, True)

    def resume(self) -> None:
        self._call(self._set_paused, False)

    def _set_paused(self, paused: bool) -> None:
        self._paused = paused
        self._notify()

    def cut_all(self) -> int:
        """Reset every current connection; returns how many there were."""
        def cut() -> int:
            links = list(self._links.values())
            for link in links:
                link.close(abort=True)
            return len(links)
        return self._call(cut)

    @property
    def connection_count(self) -> int:
        return len(self._links)

    def buffered_bytes(self) -> int:
        """Bytes the proxy holds now, over all connections: its own buffers, the stream readers'
        and the unsent parts of the transports' write buffers (to check the bounds)."""
        def count() -> int:
            return sum(len(link.cbuf) + len(link.sbuf) + len(link.c_r._buffer) + len(link.u_r._buffer)
                       + link.c_w.transport.get_write_buffer_size()
                       + link.u_w.transport.get_write_buffer_size()
                       for link in self._links.values())
        return self._call(count)


# -- measuring the overhead: python -m tests.faults.redis_proxy ---------------------------------

_MEASURE = r"""
import asyncio, statistics, sys, time
import redis.asyncio as aioredis

async def pipeline(url, n):
    r = aioredis.Redis.from_url(url)
    took = []
    for _ in range(5):
        pipe = r.pipeline(transaction=False)
        for i in range(n):
            pipe.set(f"k{i}", i)
        t = time.perf_counter()
        await pipe.execute()
        took.append(time.perf_counter() - t)
    await r.aclose()
    return statistics.median(took) * 1e3

async def xread_round_trip(url, direct, n=300):
    r, w = aioredis.Redis.from_url(url), aioredis.Redis.from_url(direct)
    last, took = (await w.xadd("rt", {"i": 0})).decode(), []
    for i in range(n):
        read = asyncio.create_task(r.xread({"rt": last}, block=2000))
        await asyncio.sleep(0.002)       # XREAD is waiting in Redis
        t = time.perf_counter()
        last = (await w.xadd("rt", {"i": i})).decode()
        await read
        took.append(time.perf_counter() - t)
    await r.aclose(); await w.aclose()
    return statistics.median(took) * 1e6

async def main(url, direct):
    print(f"{await pipeline(url, 1000):.1f} {await pipeline(url, 10000):.1f} {await xread_round_trip(url, direct):.0f}")
asyncio.run(main(*sys.argv[1:]))
"""


def _measure() -> None:
    """Print a pipeline of 1,000 and 10,000 SETs and an XREAD BLOCK wake-up, direct and via the
    proxy, from a client in another process (as the gateway is); medians, three rounds. The
    proxy's CPU per command is this process's CPU time over the commands it recorded: a figure
    that holds on a busy machine, where the wall-clock ones vary."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from tests.conftest import RedisServer

    with tempfile.TemporaryDirectory() as d:
        server = RedisServer(Path(d))
        server.start()
        try:
            with RedisProxy(server.port) as proxy:
                for _ in range(3):
                    for name, url in (("direct", server.url), ("proxy", proxy.url)):
                        cpu = time.process_time()
                        out = subprocess.run([sys.executable, "-c", _MEASURE, url, server.url],
                                             capture_output=True, text=True, check=True).stdout.split()
                        cpu = time.process_time() - cpu
                        per = f"   proxy CPU {cpu / len(proxy.commands()) * 1e6:.1f} us/command" if name == "proxy" else ""
                        print(f"{name:6s}  1,000 SETs {out[0]:>6s} ms   10,000 SETs {out[1]:>6s} ms   "
                              f"XADD -> XREAD BLOCK wake-up {out[2]:>5s} us{per}")
                    proxy.clear()
        finally:
            server.stop()


if __name__ == "__main__":
    _measure()
