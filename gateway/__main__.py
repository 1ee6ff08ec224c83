"""`python -m gateway` / `imagemesh-gateway`: run one gateway replica until SIGTERM.

Start-up fails closed, with one line naming the setting and exit status 2: a bad value (see
gateway.settings), no API key configured, Redis not reachable within --redis-wait seconds (a
gateway without Redis can accept nothing; exiting lets Kubernetes restart it with back-off,
and the line says which URL — without its password — could not be reached), the listen address
in use or not an address of this host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import AuthenticationError, RedisError, ResponseError

from imagemesh.config import SettingError, load
from imagemesh.process import announce, check_bindable, run, stop_signal
from imagemesh.redaction import safe_url

from . import redis_client
from .server import Gateway
from .settings import GatewaySettings

PROG = "imagemesh-gateway"
log = logging.getLogger("imagemesh.gateway")


def _why(exc: BaseException) -> str:
    text = str(exc).lower()
    for needle, reason in (("refused", "connection refused"), ("error 111 ", "connection refused"),
                           ("connect call failed", "connection refused"), ("timeout", "timed out"),
                           ("timed out", "timed out"), ("name or service", "unknown host"),
                           ("nodename", "unknown host"), ("no such file", "no such socket")):
        if needle in text:
            return reason
    return type(exc).__name__


async def wait_for_redis(s: GatewaySettings) -> None:
    """Return once Redis answers PING; raise SettingError after `s.redis_wait` seconds, or at
    once when Redis refuses our credentials (waiting cannot fix that)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + s.redis_wait
    where = safe_url(s.redis_url)
    client = redis_client.client(s.redis_url, socket_connect_timeout=2.0, socket_timeout=2.0)
    warned = False
    try:
        while True:
            try:
                await client.ping()
                return
            except AuthenticationError:
                raise SettingError("redis_url", f"Redis at {where} refused the credentials in the URL") from None
            except ResponseError as exc:
                if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                    raise SettingError("redis_url", f"Redis at {where} needs a password (redis://:PASSWORD@host)") from None
                raise SettingError("redis_url", f"Redis at {where} answered an error: {type(exc).__name__}") from None
            except (RedisError, OSError) as exc:
                left = deadline - loop.time()
                if left <= 0:
                    within = f" within {s.redis_wait:g}s" if s.redis_wait else ""
                    raise SettingError("redis_url", f"cannot reach Redis at {where}{within} ({_why(exc)})") from None
                if not warned:
                    log.warning("Redis at %s is not reachable yet (%s); waiting up to %gs", where, _why(exc), s.redis_wait)
                    warned = True
                await asyncio.sleep(min(0.5, left))
    finally:
        await client.aclose()


async def amain(settings: GatewaySettings) -> int:
    host, _, port_text = settings.listen.rpartition(":")
    check_bindable("listen", host, int(port_text))
    await wait_for_redis(settings)
    gateway = Gateway(settings)
    if len(gateway.keys) == 0:
        raise SettingError("api_keys", "no API key configured (nor in --api-keys-file): every call would be refused")
    try:
        port = await gateway.start()
    except RuntimeError as exc:
        if "bind" not in str(exc).lower() and "listen" not in str(exc).lower():
            raise
        with contextlib.suppress(Exception):
            await gateway.stop()
        raise SettingError("listen", f"cannot listen on {settings.listen}: the port is in use, or the host "
                                     "is not an address of this machine") from None
    announce("GATEWAY", f"{host}:{port}")
    log.info("gateway %s listening on %s:%d", gateway.id, host, port)
    name = await stop_signal()
    log.info("%s received", name)
    await gateway.drain()
    return 0


def main(argv: list[str] | None = None) -> None:
    run(PROG, "gateway", load(GatewaySettings, argv, prog=PROG), amain)


if __name__ == "__main__":
    main()
