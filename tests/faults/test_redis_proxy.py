"""The fault-injection Redis proxy itself, against the suite's real redis-server.

Clients are redis.asyncio (as in the gateway) and plain sockets where the exact bytes matter.
Clients made here do not retry: redis-py retries a command after a connection error by
default, which would hide the fault under test (one test shows that it does).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
import uuid

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, ResponseError, TimeoutError

from tests.conftest import python_env
from tests.faults.redis_proxy import RedisProxy, command_label, normalise_key

pytestmark = pytest.mark.faults

BUMP = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture
def proxy(redis_server):
    with RedisProxy(redis_server.port) as p:
        yield p


@pytest.fixture
async def connect(proxy):
    """Make redis.asyncio clients through the proxy (no retries); all closed at the end."""
    made = []

    def make(**kw) -> aioredis.Redis:
        kw.setdefault("retry", Retry(NoBackoff(), 0))
        made.append(aioredis.Redis.from_url(proxy.url, **kw))
        return made[-1]
    yield make
    for c in made:
        await c.aclose()


def raw_socket(proxy: RedisProxy, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def recv_until(sock: socket.socket, *markers: bytes, timeout: float = 5.0) -> bytes:
    """Read until every marker was seen (in any order), or fail after `timeout`."""
    data, deadline = b"", time.monotonic() + timeout
    while not all(m in data for m in markers):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"connection closed; got {data!r}"
        data += chunk
    return data


def resp(*args: bytes | str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


# What redis-py sends on each new connection before the caller's first command (HELLO and the
# maintenance-notifications opt-in since redis-py 8, which speaks RESP3 by default).
HANDSHAKE = {"HELLO", "CLIENT SETINFO", "CLIENT MAINT_NOTIFICATIONS"}


def labels(proxy: RedisProxy) -> list[str]:
    """Labels of the recording, without the handshake redis-py sends on each new connection."""
    return [c.label for c in proxy.commands() if c.label not in HANDSHAKE]


# -- passthrough and recording ----------------------------------------------------------------

async def test_ordinary_commands_pass_and_are_recorded_in_order(proxy, connect, redis):
    r = connect()
    assert await r.set("im:{b1}:meta", "x") is True
    assert await r.hset("im:{b1}:tasks", mapping={"0": "a", "1": "b"}) == 2
    assert await r.hgetall("im:{b1}:tasks") == {b"0": b"a", b"1": b"b"}
    assert await r.incr("n") == 1
    assert await r.get("im:{b1}:meta") == b"x"
    assert await r.get("missing") is None
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await r.incr("im:{b1}:tasks")     # a real error passes through as it is
    assert await redis.get("n") == b"1"    # it reached the real server

    cmds = [c for c in proxy.commands() if c.label not in HANDSHAKE]
    assert [c.label for c in cmds] == ["SET im:{...}:meta", "HSET im:{...}:tasks", "HGETALL im:{...}:tasks",
                                       "INCRBY n", "GET im:{...}:meta", "GET missing", "INCRBY im:{...}:tasks"]
    assert [c.name for c in cmds] == ["SET", "HSET", "HGETALL", "INCRBY", "GET", "GET", "INCRBY"]
    assert [c.seq for c in cmds] == sorted(c.seq for c in cmds)
    assert len({c.conn for c in cmds}) == 1
    assert cmds[0].args == (b"SET", b"im:{b1}:meta", b"x")
    assert all(c.action is None for c in cmds)


def test_passwords_are_not_recorded_and_inline_commands_are(proxy):
    with raw_socket(proxy) as s:
        s.sendall(resp("AUTH", "hunter2") + resp("CONFIG", "SET", "maxmemory-policy", "noeviction")
                  + b"PING\r\n")           # an inline command, as telnet sends it
        assert recv_until(s, b"+PONG").endswith(b"+OK\r\n+PONG\r\n")
    assert [(c.label, c.args) for c in proxy.commands()] == [
        ("AUTH", (b"AUTH",)), ("CONFIG SET", (b"CONFIG", b"SET")), ("PING", (b"PING",))]


async def test_pipeline_of_a_thousand_commands_passes_in_order(proxy, connect, redis):
    r = connect()
    value = b"v" * 200                     # 1,000 commands of ~250 bytes: several TCP reads
    pipe = r.pipeline(transaction=False)
    expected = []
    for i in range(1000):
        if i % 3 == 0:
            pipe.set(f"p{i}", value)
            expected.append(True)
        elif i % 3 == 1:
            pipe.incr("c")
            expected.append(i // 3 + 1)
        else:
            pipe.get(f"p{i - 2}")
            expected.append(value)
    assert await pipe.execute() == expected
    assert await redis.get("c") == b"333"
    cmds = [c for c in proxy.commands() if c.label not in HANDSHAKE]
    assert [c.name for c in cmds] == [["SET", "INCRBY", "GET"][i % 3] for i in range(1000)]


async def test_large_values_pass_both_ways_and_the_recording_keeps_a_prefix(proxy, connect):
    r = connect()
    big = bytes(range(256)) * (5 * 4096)   # 5 MiB, every byte value
    assert await r.set("big", big) is True
    assert await r.get("big") == big
    recorded = [c for c in proxy.commands() if c.name == "SET"][0]
    assert recorded.args == (b"SET", b"big", big[:512])


async def test_scripts_are_labelled_by_name_through_evalsha_script_load_and_eval(proxy, connect, redis):
    await redis.script_flush()
    proxy.register_scripts({"BUMP": BUMP})
    r = connect()
    bump = r.register_script(BUMP)
    assert await bump(keys=["im:{b1}:n"], args=[2]) == 2    # EVALSHA -> NOSCRIPT -> SCRIPT LOAD -> EVALSHA
    assert await r.eval(BUMP, 1, "im:{b1}:n", 3) == 5
    pipe = r.pipeline(transaction=False)
    await bump(keys=["im:{b2}:n"], args=[1], client=pipe)
    pipe.get("im:{b2}:n")
    assert await pipe.execute() == [1, b"1"]
    assert labels(proxy) == ["BUMP", "SCRIPT LOAD BUMP", "BUMP", "BUMP", "SCRIPT EXISTS", "BUMP", "GET im:{...}:n"]
    assert [c.name for c in proxy.commands() if c.label == "BUMP"] == ["EVALSHA", "EVALSHA", "EVAL", "EVALSHA"]

    other = "return 42"                    # not registered: named by its sha1, the same every run
    sha = await redis.script_load(other)
    assert await r.evalsha(sha, 0) == 42
    assert labels(proxy)[-1] == f"EVALSHA {sha[:12]}"
    proxy.name_scripts({sha: "ANSWER"})
    assert await r.evalsha(sha, 0) == 42
    assert labels(proxy)[-1] == "ANSWER"


async def test_blocking_xread_waits_while_other_connections_flow(proxy, connect, redis):
    reader, other = connect(), connect()
    await redis.xgroup_create("im:q:{gen|k1}", "g", id="$", mkstream=True)
    blocked = asyncio.create_task(reader.xreadgroup("g", "c1", {"im:q:{gen|k1}": ">"}, block=5000, count=1))
    plain = asyncio.create_task(reader.xread({"im:{b1}:ev": "$"}, block=5000))
    await asyncio.sleep(0.2)
    assert not blocked.done() and not plain.done()
    assert await other.ping() is True      # another connection is not held up
    entry = await redis.xadd("im:q:{gen|k1}", {"t": "1"})
    ((_, [(got, fields)]),) = await asyncio.wait_for(blocked, 2)
    assert (got, fields) == (entry, {b"t": b"1"})
    await redis.xadd("im:{b1}:ev", {"e": "x"})
    assert (await asyncio.wait_for(plain, 2))[0][1][0][1] == {b"e": b"x"}
    assert {"XREADGROUP im:q:{...}", "XREAD im:{...}:ev"} <= set(labels(proxy))


async def test_pubsub_messages_pass_and_commands_are_still_recorded(proxy, connect, redis):
    sub = connect().pubsub()
    await sub.subscribe("im:work", "im:lease:wake:gw-h-12")
    for _ in range(2):
        assert (await sub.get_message(timeout=2))["type"] == "subscribe"
    assert await redis.publish("im:work", "go") == 1
    message = await sub.get_message(timeout=2)
    assert (message["channel"], message["data"]) == (b"im:work", b"go")
    await sub.ping()
    assert (await sub.get_message(timeout=2))["type"] == "pong"
    await sub.aclose()
    assert "SUBSCRIBE im:work im:lease:wake:*" in labels(proxy)
    assert labels(proxy)[-1] == "PING"


async def test_replies_before_a_subscribe_in_one_write_stay_paired(proxy, redis):
    with raw_socket(proxy) as s:
        s.sendall(resp("SET", "a", "1") + resp("GET", "a") + resp("SUBSCRIBE", "ch") + resp("PING"))
        data = recv_until(s, b"pong")
        assert data.startswith(b"+OK\r\n$1\r\n1\r\n*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n")
        await redis.publish("ch", "hello")
        assert b"hello" in recv_until(s, b"hello")
    assert [c.label for c in proxy.commands()] == ["SET a", "GET a", "SUBSCRIBE ch", "PING"]


def test_once_replies_stop_answering_commands_a_callback_acts_when_forwarded(proxy):
    rule = proxy.inject("SET x", "callback", fn=lambda cmd: None)
    with raw_socket(proxy) as s:
        s.sendall(resp("CLIENT", "REPLY", "OFF") + resp("SET", "x", "1"))
        assert rule.wait(2)                # Redis sends no reply to wait for
        s.sendall(resp("CLIENT", "REPLY", "ON"))
        assert recv_until(s, b"+OK") == b"+OK\r\n"


async def test_resp3_replies_and_pushes_pass_through(proxy, connect, redis):
    r = connect(protocol=3)
    await r.hset("h", mapping={"a": "1"})
    assert await r.hgetall("h") == {b"a": b"1"}          # a RESP3 map
    assert [c.args for c in proxy.commands() if c.name == "HELLO"] == [(b"HELLO",)]

    # A push (client-side caching invalidation) arrives while a blocking command waits for its
    # reply: it must not be taken for that reply, or the injected error would come first.
    with raw_socket(proxy) as s:
        s.sendall(resp("HELLO", "3") + resp("CLIENT", "TRACKING", "ON") + resp("GET", "k"))
        recv_until(s, b"+OK\r\n_\r\n")
        proxy.inject("ECHO", "error")
        s.sendall(resp("BLPOP", "l", "5") + resp("ECHO", "x") + resp("PING"))
        await asyncio.sleep(0.1)
        await redis.set("k", "changed")    # invalidates k: a push to s
        await asyncio.sleep(0.1)
        await redis.rpush("l", "a")        # BLPOP's reply
        data = recv_until(s, b"+PONG")
    assert data.index(b">2\r\n$10\r\ninvalidate") < data.index(b"*2\r\n$1\r\nl\r\n$1\r\na\r\n") \
        < data.index(b"-ERR injected") < data.index(b"+PONG")


# -- actions ------------------------------------------------------------------------------------

async def test_error_in_the_middle_of_a_pipeline_fails_only_that_command(proxy, connect, redis):
    r = connect()
    rule = proxy.inject(lambda c: c.args[1:2] == (b"n",), "error", nth=2)
    pipe = r.pipeline(transaction=False)
    pipe.set("a", "1").incr("n").get("a").incr("n").set("b", "2").get("b").incr("n")
    results = await pipe.execute(raise_on_error=False)
    assert results[:3] == [True, 1, b"1"]
    assert isinstance(results[3], ResponseError) and "injected" in str(results[3])
    assert results[4:] == [True, b"2", 2]
    assert await redis.get("n") == b"2"    # the failed INCR never reached Redis
    assert rule.fired and rule.fired_at.label == "INCRBY n" and rule.fired_at.action == "error"
    assert rule.seen == 3 and len(rule.hits) == 1
    assert await r.get("a") == b"1"        # the connection goes on

    proxy.inject("GET a", "error", message="LOADING Redis is loading the dataset in memory")
    with pytest.raises(BusyLoadingError):
        await r.get("a")


async def test_error_inside_multi_aborts_the_transaction_like_a_queueing_error(proxy, connect, redis):
    r = connect()
    rule = proxy.inject("INCRBY n", "error")
    pipe = r.pipeline(transaction=True)
    pipe.set("a", "1").incr("n").set("b", "2")
    with pytest.raises(ResponseError, match="injected"):
        await pipe.execute()
    assert rule.fired
    assert await redis.exists("a", "b", "n") == 0      # nothing of the transaction ran
    pipe = r.pipeline(transaction=True)                 # the connection is usable afterwards
    assert await pipe.set("a", "1").incr("n").execute() == [True, 1]
    exec_rule = proxy.inject("EXEC", "error")           # a failing EXEC runs nothing either
    with pytest.raises(ResponseError, match="injected"):
        await r.pipeline(transaction=True).incr("n").execute()
    assert exec_rule.fired and await redis.get("n") == b"1"


async def test_drop_closes_the_connection_before_the_command_reaches_redis(proxy, connect, redis):
    r = connect()
    assert await r.set("before", 1)
    rule = proxy.inject("SET x", "drop")
    with pytest.raises(ConnectionError):
        await r.set("x", 1)
    assert await redis.exists("x") == 0
    assert rule.fired and rule.fired_at.label == "SET x"
    assert await r.set("x", 2) is True    # a new connection works: the rule fired once
    assert await redis.get("x") == b"2"


async def test_drop_after_applies_the_command_but_the_client_sees_a_connection_error(proxy, connect, redis):
    r = connect()
    rule = proxy.inject("INCRBY n", "drop_after")
    with pytest.raises(ConnectionError):
        await r.incr("n")
    assert await redis.get("n") == b"1"    # it took effect
    assert rule.fired


async def test_a_retrying_client_sends_a_dropped_after_command_again(proxy, redis):
    """What a sweep must expect of the gateway's clients: redis-py's default Retry (3 retries,
    with backoff) does the same, so a `drop_after` write is applied twice."""
    r = aioredis.Redis.from_url(proxy.url, retry=Retry(NoBackoff(), 3))
    proxy.inject("INCRBY n", "drop_after")
    try:
        assert await r.incr("n") == 2
    finally:
        await r.aclose()
    assert await redis.get("n") == b"2"
    assert labels(proxy).count("INCRBY n") == 2


async def test_delay_holds_the_command_and_what_follows_on_that_connection_only(proxy, connect):
    slow, other = connect(), connect()
    await slow.ping()
    await other.ping()
    rule = proxy.inject("SET b", "delay", seconds=1.0)
    pipe = slow.pipeline(transaction=False)
    pipe.get("a").set("b", "1").get("b")
    started = time.monotonic()
    held = asyncio.create_task(pipe.execute())
    await asyncio.sleep(0.1)
    t = time.monotonic()
    assert await other.ping() is True
    assert time.monotonic() - t < 0.5      # other connections are not held
    assert not held.done()
    assert await held == [None, True, b"1"]
    assert time.monotonic() - started >= 1.0
    assert rule.fired


async def test_blackhole_stops_the_connection_until_the_rule_is_cleared(proxy, connect):
    r = connect(socket_timeout=0.3)
    rule = proxy.inject("GET a", "blackhole")
    with pytest.raises(TimeoutError):
        await r.get("a")
    assert rule.fired

    rule2 = proxy.inject("ECHO", "blackhole")
    with raw_socket(proxy) as s:
        s.sendall(resp("PING"))
        recv_until(s, b"+PONG")
        s.sendall(resp("ECHO", "hi") + resp("PING"))
        s.settimeout(0.5)
        with pytest.raises(socket.timeout):
            s.recv(100)
        rule2.clear()
        assert recv_until(s, b"+PONG") == b"$2\r\nhi\r\n+PONG\r\n"
    rule.clear()


async def test_callback_runs_after_the_command_took_effect_before_the_reply(proxy, connect, redis, redis_server):
    import redis as sync_redis
    direct = sync_redis.Redis.from_url(redis_server.url)
    seen = []
    rule = proxy.inject("INCRBY n", "callback", fn=lambda cmd: seen.append((cmd.label, direct.get("n"))))
    r = connect()
    assert await r.incr("n") == 1
    assert seen == [("INCRBY n", b"1")]      # called in the proxy thread, after Redis applied it

    proxy.inject("INCRBY n", "callback", fn=lambda cmd: seen.append(cmd.seq), reply="drop")
    with pytest.raises(ConnectionError):
        await r.incr("n")
    assert len(seen) == 2 and direct.get("n") == b"2"
    assert rule.fired
    direct.close()


CHILD = """
import sys, redis
from redis.retry import Retry
from redis.backoff import NoBackoff
r = redis.Redis.from_url(sys.argv[1], retry=Retry(NoBackoff(), 0))
sys.stdin.readline()
for _ in range(10):
    print(r.incr("crash:n"), flush=True)
"""


async def test_crash_after_sigkills_the_process_right_after_the_command_took_effect(proxy, python, redis):
    child = subprocess.Popen([python, "-c", CHILD, proxy.url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=python_env())
    try:
        rule = proxy.crash_after("INCRBY crash:n", child.pid, nth=3)
        child.stdin.write("go\n")
        child.stdin.flush()
        out, _ = child.communicate(timeout=20)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert out.split() == ["1", "2"]       # the third reply never reached it
    assert await redis.get("crash:n") == b"3"   # ... but the third INCR took effect
    assert rule.fired and rule.fired_at.label == "INCRBY crash:n"


# -- labels -------------------------------------------------------------------------------------

def test_normalise_key_replaces_hash_tags_and_parts_with_digits():
    assert normalise_key("im:{b7f3c2}:meta") == "im:{...}:meta"
    assert normalise_key(b"im:q:{generate|replicate:ab12}") == "im:q:{...}"
    assert normalise_key("im:budget:{fal:9f}:20250101") == "im:budget:{...}:*"
    assert normalise_key("im:lease:wake:gw-host-41-ab12") == "im:lease:wake:*"
    assert normalise_key("im:queues") == "im:queues"


def test_command_label_names_subcommands_streams_and_scripts():
    scripts = {"0123456789abcdef0123456789abcdef01234567": "FINISH"}
    assert command_label([b"evalsha", b"0123456789ABCDEF0123456789ABCDEF01234567", b"0"], scripts) == "FINISH"
    assert command_label([b"EVALSHA", b"fedcba9876543210fedcba9876543210fedcba98", b"0"]) == "EVALSHA fedcba987654"
    assert command_label([b"XGROUP", b"create", b"im:q:{g|k}", b"g", b"$"]) == "XGROUP CREATE im:q:{...}"
    assert command_label([b"CLIENT", b"SETNAME", b"gw-1"]) == "CLIENT SETNAME"
    assert command_label([b"XREADGROUP", b"GROUP", b"g", b"c", b"COUNT", b"5", b"BLOCK", b"100", b"STREAMS",
                          b"im:q:{a}", b"im:q:{b}", b">", b">"]) == "XREADGROUP im:q:{...}"
    assert command_label([b"PUBLISH", b"im:lease:wake:gw-7", b"x"]) == "PUBLISH im:lease:wake:*"
    assert command_label([b"MULTI"]) == "MULTI"


async def test_labels_are_the_same_in_two_identical_runs(redis_server, redis):
    async def run() -> list[tuple[str, str, int]]:
        batch, gateway = uuid.uuid4().hex, f"gw-host-{time.monotonic_ns()}"
        await redis.script_flush()        # else the second run skips NOSCRIPT + SCRIPT LOAD
        with RedisProxy(redis_server.port) as p:
            p.register_scripts({"BUMP": BUMP})
            r = aioredis.Redis.from_url(p.url)
            try:
                bump = r.register_script(BUMP)
                pipe = r.pipeline(transaction=False)
                pipe.hset(f"im:{{{batch}}}:tasks", "0", "q")
                pipe.xadd(f"im:q:{{gen|{batch[:6]}}}", {"b": batch})
                pipe.publish(f"im:lease:wake:{gateway}", "1")
                await pipe.execute()
                await bump(keys=[f"im:{{{batch}}}:meta"], args=[1])
                await r.xread({f"im:{{{batch}}}:ev": "0"}, block=10)
            finally:
                await r.aclose()
            return [(c.label, c.name, c.conn) for c in p.commands()]

    first, second = await run(), await run()
    assert first == second
    assert [label for label, _, _ in first if label not in HANDSHAKE] == [
        "HSET im:{...}:tasks", "XADD im:q:{...}", "PUBLISH im:lease:wake:*", "BUMP", "SCRIPT LOAD BUMP", "BUMP",
        "XREAD im:{...}:ev"]


# -- whole-proxy switches -----------------------------------------------------------------------

async def test_refuse_new_closes_new_connections_but_not_open_ones(proxy, connect):
    open_one = connect()
    await open_one.ping()
    proxy.refuse_new()
    with pytest.raises(ConnectionError):
        await connect().ping()
    assert await open_one.ping() is True
    proxy.accept_new()
    assert await connect().ping() is True


async def test_pause_black_holes_every_connection_until_resume(proxy, connect, redis):
    r = connect(socket_timeout=0.3)
    await r.ping()
    waiting = raw_socket(proxy)
    waiting.sendall(resp("BLPOP", "l", "5"))
    await asyncio.sleep(0.1)
    proxy.pause()
    try:
        with pytest.raises(TimeoutError):
            await r.ping()
        await redis.rpush("l", "a")        # BLPOP is answered, but the answer is held
        with raw_socket(proxy) as s:       # a new connection is held too
            s.sendall(resp("ECHO", "later"))
            for sock in (s, waiting):
                sock.settimeout(0.3)
                with pytest.raises(socket.timeout):
                    sock.recv(100)
            proxy.resume()
            assert recv_until(s, b"later") == b"$5\r\nlater\r\n"
            assert recv_until(waiting, b"a\r\n") == b"*2\r\n$1\r\nl\r\n$1\r\na\r\n"
    finally:
        proxy.resume()
        waiting.close()


async def test_cut_all_closes_every_current_connection(proxy, connect):
    a, b = connect(), connect()
    waiting = [asyncio.create_task(c.xread({"s": "$"}, block=5000)) for c in (a, b)]
    await asyncio.sleep(0.2)
    assert proxy.cut_all() == 2
    for w in waiting:
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(w, 2)
    assert await a.ping() is True          # redis-py connects again for the next command


# -- bounds and lifecycle -----------------------------------------------------------------------

async def test_a_client_that_does_not_read_stops_the_reading_from_redis(proxy, redis):
    size = 8 * 1024 * 1024
    await redis.set("big", b"x" * size)
    with raw_socket(proxy) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(resp("GET", "big"))
        await asyncio.sleep(0.5)          # the client reads nothing meanwhile
        assert proxy.buffered_bytes() < 1024 * 1024
        got = recv_until(s, b"x" * 64)
        while len(got) < size + 11:
            got += s.recv(1 << 20)
        assert got == b"$%d\r\n" % size + b"x" * size + b"\r\n"


async def test_a_command_over_the_size_limit_closes_the_connection(redis_server):
    with RedisProxy(redis_server.port, max_message_bytes=1024 * 1024) as p:
        r = aioredis.Redis.from_url(p.url, retry=Retry(NoBackoff(), 0))
        try:
            with pytest.raises(ConnectionError):
                await r.set("too-big", b"x" * (2 * 1024 * 1024))
        finally:
            await r.aclose()


async def test_the_recording_keeps_the_newest_commands(redis_server):
    with RedisProxy(redis_server.port, max_recorded=10) as p:
        with raw_socket(p) as s:
            s.sendall(b"".join(resp("ECHO", str(i)) for i in range(25)))
            recv_until(s, b"$2\r\n24\r\n")
        assert [c.args[1] for c in p.commands()] == [str(i).encode() for i in range(15, 25)]
        assert p.dropped == 15
        p.clear()
        assert p.commands() == [] and p.dropped == 0


async def test_stop_closes_blocked_connections_promptly(redis_server):
    p = RedisProxy(redis_server.port).start()
    r = aioredis.Redis.from_url(p.url, retry=Retry(NoBackoff(), 0))
    try:
        blocked = asyncio.create_task(r.xread({"s": "$"}, block=30_000))
        await asyncio.sleep(0.2)
        t = time.monotonic()
        p.stop()
        assert time.monotonic() - t < 2
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(blocked, 2)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", p.port), timeout=1).close()
    finally:
        await r.aclose()
        p.stop()
