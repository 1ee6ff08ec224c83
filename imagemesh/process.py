"""What every ImageMesh process does the same way: logging, tracing, /metrics, ports, SIGTERM
handling, and ending on a problem found at start with one line and exit status 2.

    def main(argv=None):
        settings = load(GatewaySettings, argv, prog=PROG)   # a bad value: one line, exit 2
        run(PROG, "gateway", settings, amain)               # a SettingError or FatalError at
                                                            # start: the same
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

from imagemesh import logs, metrics, tracing
from imagemesh.config import CommonSettings, SettingError, fail

S = TypeVar("S", bound=CommonSettings)


class FatalError(Exception):
    """The process can't run as configured, for a reason that is not one setting's value alone
    (a missing secret, unusable certificates, a key the gateway refuses). `run` prints the
    message as one line and exits 2; the message names the setting and never holds a secret."""


def configure_logging(level: str, fmt: str = "text") -> None:
    logs.configure(level, fmt)


def host_port(host: str, port: int) -> str:
    """`host:port` as gRPC wants it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def check_bindable(name: str, host: str, port: int) -> None:
    """Raise SettingError naming `name` unless `host`:`port` can be bound now: in use (by
    anything, another gateway included: gRPC's port reuse is off, so a busy port is never
    shared), or `host` not an address of this machine. Checked with a plain socket before gRPC
    binds, which would print its own multi-line error; port 0 (a free one) always can."""
    if port == 0:
        return
    bare = host.strip("[]")
    try:
        infos = socket.getaddrinfo(bare or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise SettingError(name, f"cannot listen on {host}:{port}: {host!r} is not a known host") from None
    for family, kind, proto, _name, addr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is no conflict
            try:
                probe.bind(addr)
            except OSError as exc:
                raise SettingError(name, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve_metrics(port: int, role: str | None = None, host: str = "127.0.0.1") -> int | None:
    """Start /metrics (plain HTTP) unless port is -1; returns the bound port (announced on
    stdout). `role`: the process kind whose metric families it exports (imagemesh.metrics.ROLES).
    Raises SettingError naming --metrics-port when the port cannot be bound."""
    if port < 0:
        return None
    check_bindable("metrics_port", host, port)
    try:
        bound = metrics.serve(port, host, role=role)
    except OSError as exc:
        raise SettingError("metrics_port", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    announce("METRICS_PORT", bound)
    return bound


async def start_health(port: int, host: str = "127.0.0.1"):
    """The process's plaintext gRPC health server (imagemesh.health), started NOT_SERVING.
    Raises SettingError naming --health-port when the port cannot be bound."""
    from imagemesh.health import HealthServer  # imagemesh.health imports this module

    health = HealthServer(port, host)
    await health.start()
    return health


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop `choice` (CommonSettings.event_loop) names. uvloop runs the same asyncio
    code with less CPU per message (bench/REPORT.md, scenario 11); grpc.aio and redis.asyncio
    work on either. Raises SettingError when uvloop is asked for and not installed."""
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SettingError("event_loop", "uvloop is not installed (pip install 'imagemesh[server]')") from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(prog: str, role: str, settings: S, amain: Callable[[S], Awaitable[int]]) -> NoReturn:
    """Configure logging, tracing and /metrics from `settings`, run `amain(settings)`, exit with
    its status. A SettingError or FatalError on the way (a port in use, Redis unreachable, no
    secret key) ends the process with one line on stderr and exit status 2."""
    code = 2
    try:
        configure_logging(settings.log_level, settings.log_format)
        tracing.configure(settings.tracing, f"imagemesh-{role}")
        serve_metrics(settings.metrics_port, role, settings.metrics_host)
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            code = runner.run(amain(settings))
    except (SettingError, FatalError) as exc:
        fail(prog, str(exc))
    finally:
        tracing.shutdown()
    sys.exit(code)


def announce(name: str, value: object) -> None:
    """One `NAME=value` line on stdout: how tests and `make run` learn ports chosen at start."""
    print(f"{name}={value}", flush=True)


async def stop_signal() -> str:
    """Wait for SIGTERM or SIGINT; returns the signal's name."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[str] = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda s=sig: got.done() or got.set_result(s.name))
    try:
        return await got
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
