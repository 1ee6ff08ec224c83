"""Settings: every setting is a command-line flag and an `IMAGEMESH_*` environment variable.

A settings class is a dataclass whose fields carry their help text; `load(cls, argv)` builds the
argument parser from it, so `--help` lists each flag with its environment variable and its
*default* (never the value the environment holds: that may be a key or a token; a secret
setting shows no value at all). Precedence: flag > environment > default.

Settings fail closed. A value that does not parse or check — a port out of range, an address
without a port, an unknown log level, a mapping naming a provider the mesh does not have — ends
the process before it does anything, with one line on stderr naming the setting (flag and
variable) and what is wrong with the value, and exit status 2. The value of a secret setting is
never repeated. A field's `check` validates its own value; a class's `validate()` checks what
depends on several fields. A setting that parses but cannot be used at start (a port in use,
Redis unreachable) raises `SettingError` from the process's start-up; `process.run` turns it
into the same one line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

ENV_PREFIX = "IMAGEMESH_"

# The providers a mesh can offer: the generation worker's adapters (gen_worker.providers) plus
# the offline `local` renderer. A name outside this list in any setting is a typo.
PROVIDERS = ("local", "replicate", "fal", "openai")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
TRACING = ("off", "otlp", "console")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")


class SettingError(ValueError):
    """A setting's value is wrong or unusable. `str()` names the setting (flag and variable) and
    the problem; it never contains the value of a secret setting."""

    def __init__(self, name: str, problem: str) -> None:
        self.setting = name
        self.problem = problem
        super().__init__(f"{describe(name)}: {problem}")


def describe(name: str) -> str:
    """`key_limits` → `--key-limits (IMAGEMESH_KEY_LIMITS)`."""
    return f"--{name.replace('_', '-')} ({env_name(name)})"


def setting(default: Any, help: str, *, check: Callable[[Any], Any] | None = None,
            secret: bool = False) -> Any:
    """A settings field. `check(value)` returns the value (possibly normalised) or raises
    ValueError saying what is wrong; `secret`: never shown in `--help` or in errors."""
    return field(default=default, metadata={"help": help, "check": check, "secret": secret})


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


# --- checks: each returns the value or raises ValueError with the problem -------------------------

def port(value: int) -> int:
    if not -1 <= value <= 65535:
        raise ValueError(f"{value} is not a port (0-65535; 0: a free port; -1: off)")
    return value


def address(value: str) -> str:
    """`host:port`, `[v6]:port` or `:port`; port 0 picks a free one."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:50051, [::]:50051)")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"{value!r}: an IPv6 host is written in brackets, e.g. [::1]:50051")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{value!r}: {host} is not an IPv6 address") from None
    elif host and not _hostname(host):
        raise ValueError(f"{value!r}: {host!r} is not a host name or address")
    return value


def host(value: str) -> str:
    """A host name or an IP address to bind (no port)."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not value or not _hostname(value):
        raise ValueError(f"{value!r} is not a host name or IP address (e.g. 127.0.0.1, 0.0.0.0, ::)")
    return value


def _hostname(host: str) -> bool:
    if host.count(":"):
        return False
    labels = host.rstrip(".").split(".")
    return all(0 < len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum()
               for label in labels)


def positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"{value} must be more than 0")
    return value


def at_least(minimum: float) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value < minimum:
            raise ValueError(f"{value} is below the minimum of {minimum:g}")
        return value
    return check


def one_of(*choices: str, upper: bool = False) -> Callable[[str], str]:
    def check(value: str) -> str:
        normal = value.strip().upper() if upper else value.strip().lower()
        if normal not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return normal
    return check


def http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL with a host")
    return value


def redis_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("not a Redis URL (redis://host:port/db, rediss://..., unix:///path)")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("the Redis URL has no host")
    try:
        parts.port
    except ValueError:
        raise ValueError("the Redis URL's port is not a number") from None
    return value


def mapping_of(value_type: type = str, *, names: Iterable[str] | None = None,
               minimum: float | None = None) -> Callable[[str], str]:
    """A check for `name=value,...` text: values of `value_type` (at least `minimum`), names
    among `names` when given. The text itself is kept (`parse_mapping` reads it)."""
    def check(text: str) -> str:
        parsed = parse_mapping(text, value_type=value_type)
        if names is not None:
            check_names(parsed, tuple(names))
        if minimum is not None:
            for name, v in parsed.items():
                if v < minimum:
                    raise ValueError(f"{name}={v}: below the minimum of {minimum:g}")
        return text
    return check


def check_names(mapping: Iterable[str], known: tuple[str, ...], what: str = "provider") -> None:
    for name in mapping:
        if name not in known:
            raise ValueError(f"unknown {what} {name!r} (known: {', '.join(known)})")


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def parse_mapping(text: str, *, value_type: type = str) -> dict[str, Any]:
    """`"replicate=8,fal=4"` → {"replicate": 8, "fal": 4}. Raises ValueError naming the bad item."""
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected name=value, got {item!r}")
        try:
            out[name.strip()] = value_type(value.strip())
        except ValueError:
            kind = {int: "a whole number", float: "a number"}.get(value_type, value_type.__name__)
            raise ValueError(f"{value.strip()!r} is not {kind} (in {item!r})") from None
    return out


# --- the loader -----------------------------------------------------------------------------------

def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false, 1/0, yes/no, on/off)")


def _parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def _parse_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


_CONVERTERS: dict[type, Callable[[str], Any]] = {bool: _parse_bool, int: _parse_int, float: _parse_float}
_UNSET = object()


class _Parser(argparse.ArgumentParser):
    """argparse, with every error on one line and exit status 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, message)


def fail(prog: str, message: str) -> NoReturn:
    """One line on stderr, exit status 2: how every bad setting ends a process (argparse's own
    `prog: error: message` form)."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    sys.exit(2)


def _help_text(f: dataclasses.Field) -> str:
    text = f.metadata.get("help", "")
    if f.metadata.get("secret"):
        shown = "secret: no value is ever shown"
    elif isinstance(f.default, bool):
        shown = f"default: {'on' if f.default else 'off'}"
    else:
        shown = f"default: {f.default!r}" if f.default == "" else f"default: {f.default}"
    return f"{text} [env {env_name(f.name)}; {shown}]".replace("%", "%%")


def _value(f: dataclasses.Field, text: str, kind: type) -> Any:
    """Convert and check one value; raises SettingError (without a secret's value)."""
    try:
        value = _CONVERTERS.get(kind, str)(text)
        check = f.metadata.get("check")
        return check(value) if check is not None else value
    except ValueError as exc:
        problem = "the value is not valid" if f.metadata.get("secret") else str(exc)
        raise SettingError(f.name, problem) from None


def load(cls: type[T], argv: list[str] | None = None, *, prog: str | None = None) -> T:
    """Parse `argv` (default: sys.argv[1:]) and the environment into an instance of `cls`.

    A bad value ends the process: one line on stderr naming the setting, exit status 2."""
    prog = prog or os.path.basename(sys.argv[0])
    description = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None
    parser = _Parser(prog=prog, description=description)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    kinds = {f.name: type(f.default) if f.default is not None else str for f in fields}
    for f in fields:
        extra = {"nargs": "?", "const": "true"} if kinds[f.name] is bool else {}
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=_UNSET,
                            metavar=f.name.upper(), help=_help_text(f), **extra)
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    try:
        for f in fields:
            given = args[f.name]
            if given is _UNSET:
                given = os.environ.get(env_name(f.name), _UNSET)
            values[f.name] = f.default if given is _UNSET else _value(f, given, kinds[f.name])
        settings = cls(**values)
        validate = getattr(settings, "validate", None)
        if validate is not None:
            validate()
    except SettingError as exc:
        fail(prog, str(exc))
    return settings


# --- settings every process has -----------------------------------------------------------------

@dataclass
class CommonSettings:
    """Settings every process has."""

    # Each process has its own default ports (metrics: gateway 9464, generation worker 9465,
    # enhance worker 9466, none of them Prometheus's own 9090; health: 8080, 8081, 8082), so
    # one of each can share a host.
    metrics_port: int = setting(9464, "Port of the Prometheus /metrics endpoint, plain HTTP (0: a free port; -1: off)",
                                check=port)
    metrics_host: str = setting("127.0.0.1", "Address /metrics binds (0.0.0.0: every interface, as in k8s/)",
                                check=host)
    health_host: str = setting("127.0.0.1", "Address the plaintext health port binds (0.0.0.0: every interface, "
                                            "as in k8s/)", check=host)
    log_level: str = setting("INFO", "Log level: DEBUG, INFO, WARNING, ERROR", check=one_of(*LOG_LEVELS, upper=True))
    log_format: str = setting("text", "Log lines as text, or json (one object a line, with batch, task, "
                                      "attempt, tenant and worker ids as fields)", check=one_of(*LOG_FORMATS))
    tracing: str = setting("off", "OpenTelemetry traces: off, otlp (OTEL_EXPORTER_OTLP_* settings; needs the "
                                  "`tracing` extra), console (spans on stderr)", check=one_of(*TRACING))
    event_loop: str = setting("auto", "Event loop: uvloop, asyncio, or auto (uvloop when installed, as the server "
                                      "extra does: it measured faster, see bench/REPORT.md)",
                              check=one_of(*EVENT_LOOPS))

    def validate(self) -> None:
        """Cross-field checks; subclasses extend it. Raises SettingError."""


@dataclass
class WorkerRuntimeSettings(CommonSettings):
    """Settings of every worker's link to the gateway (imagemesh.worker.WorkerRuntime)."""

    gateway: str = setting("127.0.0.1:50051", "Gateway address to dial (a headless Service name reaches every replica)",
                           check=address)
    api_key: str = setting("", "This worker's key (role worker)", secret=True)
    worker_id: str = setting("", "Name shown in ListWorkers (default: host-pid)")
    capacity: int = setting(16, "Tasks run at once", check=at_least(1))
    health_port: int = setting(8081, "Port of the gRPC health service, plaintext (0: a free port; -1: off). "
                                     "SERVING only while connected to a gateway; service 'liveness' while the process runs",
                               check=port)
    tls_ca: str = setting("", "CA certificate (PEM) to verify the gateway with; setting it turns TLS on (empty: plaintext)")
    tls_cert: str = setting("", "This worker's client certificate (PEM), for a gateway that requires mutual TLS")
    tls_key: str = setting("", "The private key (PEM) of IMAGEMESH_TLS_CERT")
    tls_server_name: str = setting("", "Server name expected in the gateway's certificate instead of the dialled host")
    drain_seconds: float = setting(30.0, "Grace for in-flight work on SIGTERM", check=at_least(0))
    heartbeat_interval: float = setting(2.0, "Seconds between heartbeats", check=positive)
    max_message_bytes: int = setting(16 * 1024 * 1024, "Largest gRPC message sent to or accepted from the gateway; "
                                                      "the same as the gateway's (a larger result fails its task alone)",
                                     check=at_least(1024))
