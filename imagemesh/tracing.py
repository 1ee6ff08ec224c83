"""OpenTelemetry tracing, optional: `pip install 'imagemesh[tracing]'` and `IMAGEMESH_TRACING=otlp`.

One trace follows a batch's task across the mesh, its context carried in W3C `traceparent`:

    client submit ──gRPC metadata──▶ gateway SubmitBatch ──queue entry `tr`──▶ gateway assign
      ──Assignment.trace_context──▶ worker attempt ──▶ provider call ──HTTP traceparent──▶ provider

The functions below are all a process needs; each is a no-op (and costs next to nothing) when
tracing is off or the OpenTelemetry packages are missing:

    inject(span=None) -> dict[str, str]     the current (or given) span's context, as a carrier
    extract(carrier) -> Context | None      a carrier back into a parent context
    span(name, parent=..., **attrs)         a `with` block timing one step, current inside it
    start(name, ...) / end(span)            a span that is not made current, for async
                                            generators (a `with` across a `yield` would leak)

States: a process calls `configure(mode, service)` from its settings; `off` disables everything
even when the packages are installed. A library user of `imagemesh.Client` who never calls it
gets the application's own OpenTelemetry setup (the global tracer provider), when there is one.

What can go wrong: `configure("otlp")` without the exporter package raises SettingError (the
process exits 2 naming IMAGEMESH_TRACING); an exporter that cannot reach its collector drops
spans in the background (the SDK logs it) and never slows or fails a task.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, TypeVar

from imagemesh.config import SettingError

try:
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context
except ImportError:  # the `tracing` extra is not installed
    propagate = trace = None  # type: ignore[assignment]
    Context = Any  # type: ignore[misc,assignment]

T = TypeVar("T")
_OFF = contextlib.nullcontext()
_tracer: Any = None           # set by configure(); None: ambient (the global provider) or absent
_off = False                  # configure("off") was called
_provider: Any = None


def configure(mode: str, service: str, *, exporter: Any = None) -> None:
    """Set this process's tracing from its settings: `off`, `otlp` (the standard OTEL_EXPORTER_OTLP_*
    variables say where to), or `console` (spans on stderr). `exporter`: a SpanExporter to use
    instead (tests: the SDK's InMemorySpanExporter), exported synchronously."""
    global _tracer, _off, _provider
    shutdown()
    if mode == "off":
        _tracer, _off = None, True
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (BatchSpanProcessor, ConsoleSpanExporter,
                                                    SimpleSpanProcessor)
    except ImportError:
        raise SettingError("tracing", f"{mode!r} needs the OpenTelemetry SDK: pip install 'imagemesh[tracing]'") from None
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif mode == "console":
        import sys
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    elif mode == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise SettingError("tracing", "'otlp' needs opentelemetry-exporter-otlp-proto-grpc: "
                                          "pip install 'imagemesh[tracing]'") from None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise SettingError("tracing", f"{mode!r} is not one of off, otlp, console")
    _provider, _off = provider, False
    _tracer = provider.get_tracer("imagemesh")


def shutdown() -> None:
    """Flush and stop this process's exporter (bounded by the SDK's own timeouts); back to the
    state of a process that never called `configure`."""
    global _provider, _tracer, _off
    if _provider is not None:
        _provider.shutdown()
    _provider = _tracer = None
    _off = False


def _active() -> Any:
    if _off or trace is None:
        return None
    return _tracer or trace.get_tracer("imagemesh")


def enabled() -> bool:
    return _active() is not None


def inject(span: Any = None) -> dict[str, str]:
    """The W3C trace context of `span` (default: the current one): {"traceparent": ...}, or {}."""
    if _active() is None:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span) if span is not None else None)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> "Context | None":
    """A parent context from a carrier (gRPC metadata, a queue entry, `Assignment.trace_context`)."""
    if _active() is None or not carrier:
        return None
    return propagate.extract({k.lower(): v for k, v in dict(carrier).items() if isinstance(v, str)})


_KINDS = {"internal": "INTERNAL", "server": "SERVER", "client": "CLIENT", "producer": "PRODUCER",
          "consumer": "CONSUMER"}


def _parent(parent: Any) -> Any:
    if parent is None or isinstance(parent, Mapping):
        return extract(parent) if parent else None
    return parent


def start(name: str, *, parent: Any = None, kind: str = "internal", **attrs: Any) -> Any:
    """Start a span that is not made current (end it with `end`). `parent`: a carrier or a
    Context; default the current span. None when tracing is off."""
    tracer = _active()
    if tracer is None:
        return None
    return tracer.start_span(name, context=_parent(parent), kind=getattr(trace.SpanKind, _KINDS[kind]),
                             attributes={k: v for k, v in attrs.items() if v is not None})


def end(span: Any, error: BaseException | None = None) -> None:
    if span is None:
        return
    if error is not None and not isinstance(error, (GeneratorExit,)):
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
    span.end()


def span(name: str, *, parent: Any = None, kind: str = "internal", **attrs: Any):
    """`with span("imagemesh.worker.attempt", parent=a.trace_context, task_id=...):` — the span is
    current inside the block (so `inject()` there carries it)."""
    tracer = _active()
    if tracer is None:
        return _OFF
    return tracer.start_as_current_span(name, context=_parent(parent),
                                        kind=getattr(trace.SpanKind, _KINDS[kind]),
                                        attributes={k: v for k, v in attrs.items() if v is not None})


@contextlib.contextmanager
def current(span_: Any) -> Iterator[None]:
    """Make a span from `start` current for a block that does not cross a `yield`."""
    if span_ is None:
        yield
        return
    with trace.use_span(span_, end_on_exit=False):
        yield


# --- the gateway hop: SubmitBatch → queue entry → Assignment ----------------------------------------

def entry_field() -> str:
    """The current trace context as a queue entry's `tr` field (compact JSON), or "" (then the
    entry gets no field at all)."""
    carrier = inject()
    return json.dumps(carrier, separators=(",", ":")) if carrier else ""


def dispatched(field: str | bytes, *, since: float, **attrs: Any) -> dict[str, str]:
    """Record the gateway's dispatch of one attempt — a span from `since` (`time.monotonic()`
    when its queue entry was read: the lease wait is in it) to now, child of the entry's `tr`
    field — and return the carrier for `Assignment.trace_context`. {} when tracing is off or
    the entry carries no trace."""
    if not field or _active() is None:
        return {}
    try:
        parent = json.loads(field)
    except ValueError:
        return {}
    started = time.time_ns() - int(max(0.0, time.monotonic() - since) * 1e9)
    s = _active().start_span("imagemesh.gateway.dispatch", context=extract(parent), start_time=started,
                             kind=trace.SpanKind.PRODUCER,
                             attributes={k: v for k, v in attrs.items() if v is not None})
    try:
        return inject(s)
    finally:
        s.end()


def ended_after(span_: Any, events: AsyncIterator[T]) -> AsyncIterator[T]:
    """`events`, with `span_` ended when they end (or fail, or are abandoned)."""
    if span_ is None:
        return events

    async def follow() -> AsyncIterator[T]:
        error: BaseException | None = None
        try:
            async for event in events:
                yield event
        except BaseException as exc:
            error = exc
            raise
        finally:
            end(span_, error)
    return follow()
