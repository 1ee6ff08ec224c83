"""Settings: every setting is a command-line flag and an `IMAGEMESH_*` environment variable.

A settings class is a dataclass whose fields carry their help text; `load(cls, argv)` builds the
argument parser from it, so `--help` lists each flag with its environment variable and default.
Precedence: flag > environment > default. A value that does not parse is an error at start,
naming the setting, never a silent default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

ENV_PREFIX = "IMAGEMESH_"


def setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _converter(kind: Any):
    return {bool: _parse_bool, int: int, float: float}.get(kind, str)


def load(cls: type[T], argv: list[str] | None = None, *, prog: str | None = None) -> T:
    """Parse `argv` (default: sys.argv[1:]) and the environment into an instance of `cls`."""
    parser = argparse.ArgumentParser(
        prog=prog, description=(cls.__doc__ or "").strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    hints = {f.name: (type(f.default) if f.default is not None else str) for f in fields}
    for f in fields:
        env = _env_name(f.name)
        convert = _converter(hints[f.name])
        default = f.default
        if env in os.environ:
            try:
                default = convert(os.environ[env])
            except ValueError as exc:
                parser.error(f"{env}: {exc}")
        flag = "--" + f.name.replace("_", "-")
        extra = {"nargs": "?", "const": True} if hints[f.name] is bool else {}
        parser.add_argument(flag, dest=f.name, type=convert, default=default, **extra,
                            help=f"{f.metadata.get('help', '')} [env {env}]")
    args = parser.parse_args(argv)
    return cls(**vars(args))


def parse_mapping(text: str, *, value_type: type = str) -> dict[str, Any]:
    """`"replicate=8,fal=4"` → {"replicate": 8, "fal": 4}. Raises ValueError naming the bad item."""
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected name=value, got {item!r}")
        out[name.strip()] = value_type(value.strip())
    return out


@dataclass
class CommonSettings:
    """Settings every process has."""

    # Each process has its own default ports (metrics: gateway 9464, generation worker 9465,
    # enhance worker 9466, none of them Prometheus's own 9090; health: 8080, 8081, 8082), so
    # one of each can share a host.
    metrics_port: int = setting(9464, "Port of the Prometheus /metrics endpoint, plain HTTP (0: a free port; -1: off)")
    metrics_host: str = setting("127.0.0.1", "Address /metrics binds (0.0.0.0: every interface, as in k8s/)")
    health_host: str = setting("127.0.0.1", "Address the plaintext health port binds (0.0.0.0: every interface, as in k8s/)")
    log_level: str = setting("INFO", "Log level")


@dataclass
class WorkerRuntimeSettings(CommonSettings):
    """Settings of every worker's link to the gateway (imagemesh.worker.WorkerRuntime)."""

    gateway: str = setting("127.0.0.1:50051", "Gateway address to dial (a headless Service name reaches every replica)")
    api_key: str = setting("", "This worker's key (role worker)")
    worker_id: str = setting("", "Name shown in ListWorkers (default: host-pid)")
    capacity: int = setting(16, "Tasks run at once")
    health_port: int = setting(8081, "Port of the gRPC health service, plaintext (0: a free port; -1: off). "
                                     "SERVING only while connected to a gateway; service 'liveness' while the process runs")
    tls_ca: str = setting("", "CA certificate (PEM) to verify the gateway with; setting it turns TLS on (empty: plaintext)")
    tls_cert: str = setting("", "This worker's client certificate (PEM), for a gateway that requires mutual TLS")
    tls_key: str = setting("", "The private key (PEM) of IMAGEMESH_TLS_CERT")
    tls_server_name: str = setting("", "Server name expected in the gateway's certificate instead of the dialled host")
    drain_seconds: float = setting(30.0, "Grace for in-flight work on SIGTERM")
    heartbeat_interval: float = setting(2.0, "Seconds between heartbeats")
    max_message_bytes: int = setting(16 * 1024 * 1024, "Largest gRPC message sent to or accepted from the gateway; "
                                                      "the same as the gateway's (a larger result fails its task alone)")
