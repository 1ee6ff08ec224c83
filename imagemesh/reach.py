"""Reaching the gateway before a command starts: fail fast with the reason, or wait when asked.

Without this, a wrong address met the client's re-attach loop (meant for streams that break
mid-batch), which retried silently for about 90 s. Here one cheap call, the standard health
check, asks whether anything answers at the address; until something does, the CLI says so on
stderr, retries with backoff, and gives up after `budget` seconds with the last reason
("Connection refused", a TLS handshake failure, a name that does not resolve).

Any answer counts as reached, even an error status (UNIMPLEMENTED, UNAUTHENTICATED): a gRPC
server answered. Only UNAVAILABLE and DEADLINE_EXCEEDED mean "not reached". The health check is
sent as raw bytes (an empty `HealthCheckRequest` is zero bytes), so the client needs no
grpcio-health-checking package.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import grpc

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
UNREACHED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
DEFAULT_BUDGET = 3.0   # seconds: a person at a terminal learns about a typo at once
WAIT_BUDGET = 300.0    # seconds: `--wait` without a number (bounded: a script must end)
PROBE_TIMEOUT = 2.0    # seconds per attempt: an address that drops packets answers nothing


class GatewayUnreachable(ConnectionError):
    """Nothing answered at the address within the budget; `str()` is one line with the reason."""


async def reach(channel: grpc.aio.Channel, address: str, budget: float, say: Callable[[str], None], *,
                waiting: bool = False) -> None:
    """Return once a server answers on `channel`; raise GatewayUnreachable after `budget` s.

    `say` gets one line when the first attempt fails (that the CLI is retrying, and for how
    long); `waiting` says whether the caller asked to wait (then the line does not suggest
    `--wait`)."""
    check = channel.unary_unary(HEALTH_CHECK, request_serializer=bytes, response_deserializer=bytes)
    deadline = time.monotonic() + budget
    delay = 0.1
    told = False
    while True:
        remaining = deadline - time.monotonic()
        try:
            await check(b"", timeout=max(0.1, min(PROBE_TIMEOUT, remaining)))
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in UNREACHED:
                return
            reason = reason_of(exc)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GatewayUnreachable(f"cannot reach gateway at {address}: {reason}")
        if not told:
            hint = "" if waiting else "; --wait SECONDS waits longer"
            say(f"cannot reach gateway at {address} yet ({reason}); retrying for {remaining:.0f} s{hint}")
            told = True
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 2.0)


def reason_of(exc: grpc.aio.AioRpcError) -> str:
    """The useful end of gRPC's connection error ("...: Connection refused"), on one line."""
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no answer (timed out)"
    details = " ".join((exc.details() or exc.code().name).split())
    # "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to
    # connect to remote host: Connection refused" -> "Failed to connect to remote host:
    # Connection refused" (the address is in the CLI's own line already).
    _, found, last = details.rpartition("last error: ")
    if not found or not last:
        return details
    return _ADDRESS.sub("", _STATUS.sub("", last, count=1), count=1) or details


_STATUS = re.compile(r"^[A-Z_]+: ")
_ADDRESS = re.compile(r"^(ipv4|ipv6|unix|unix-abstract):\S+: ")
