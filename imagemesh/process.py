"""What every ImageMesh process does the same way: logging, /metrics, ports, SIGTERM handling,
and the one-line exit for a problem found at start."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys

from imagemesh import metrics


class FatalError(Exception):
    """The process can't run as configured: a port in use, a missing secret, unusable
    certificates, a key the gateway refuses. `exit_on_fatal_error` prints the message as one
    line and exits 2; the message names the setting and never contains a secret."""


@contextlib.contextmanager
def exit_on_fatal_error(prog: str):
    """Around a process's start and run: a FatalError ends it with `prog: error: ...` on
    stderr and exit status 2 (the convention of a bad command-line argument), no traceback."""
    try:
        yield
    except FatalError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def check_port_free(setting: str, host: str, port: int) -> None:
    """FatalError naming `setting` when host:port can't be bound (in use, or not an address
    of this host). Checked with a plain socket first so the error is one clear line rather
    than gRPC's bind failure and its core log; the real bind follows at once (port 0 and a
    port taken between the check and the bind are still caught by the caller's own bind)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise FatalError(f"{setting}: {host!r} is not an address of this host ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC and http.server do
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise FatalError(f"{setting}: port {port} on {host} is already in use "
                                 f"(another process listens there)") from None
            raise FatalError(f"{setting}: cannot bind {host}:{port} ({exc.strerror})") from None


def host_port(host: str, port: int) -> str:
    """`host:port` as gRPC wants it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve_metrics(port: int, host: str = "127.0.0.1") -> int | None:
    """Start /metrics (plain HTTP) on host:port unless port is -1; returns the bound port
    (announced on stdout). FatalError when the port can't be bound."""
    if port < 0:
        return None
    check_port_free("IMAGEMESH_METRICS_PORT", host, port)
    try:
        bound = metrics.serve(port, host)
    except OSError as exc:
        raise FatalError(f"IMAGEMESH_METRICS_PORT: cannot serve /metrics on {host}:{port} ({exc.strerror})") from None
    announce("METRICS_PORT", bound)
    return bound


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
