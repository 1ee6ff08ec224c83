"""Tracing: off costs nothing and emits nothing; on, one trace follows a task from the client's
submit through the gateway and the worker to the provider's HTTP request."""

from __future__ import annotations

import asyncio
import sys
import time

import grpc
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from imagemesh import tracing
from imagemesh.client import Client
from imagemesh.config import SettingError
from imagemesh.v1 import imagemesh_pb2 as pb
from tests.processes import CLIENT_KEY


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    tracing.configure("console", "imagemesh-test", exporter=exporter)
    yield exporter
    tracing.shutdown()


def test_off_means_no_context_and_no_spans():
    tracing.configure("off", "imagemesh-test")
    try:
        assert tracing.inject() == {} and tracing.entry_field() == ""
        assert tracing.extract({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) is None
        assert tracing.dispatched('{"traceparent":"x"}', since=time.monotonic()) == {}
        with tracing.span("x") as s:
            assert s is None
        assert tracing.start("x") is None
    finally:
        tracing.shutdown()


def test_otlp_without_the_exporter_package_is_a_setting_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(SettingError) as info:
        tracing.configure("otlp", "imagemesh-test")
    assert "IMAGEMESH_TRACING" in str(info.value) and "imagemesh[tracing]" in str(info.value)
    tracing.shutdown()


def test_context_crosses_a_carrier_and_the_queue_entry_hop(spans):
    with tracing.span("client", kind="client") as client:
        carrier = tracing.inject()
    assert carrier["traceparent"].split("-")[1] == format(client.get_span_context().trace_id, "032x")
    with tracing.span("submit", parent=carrier):
        field = tracing.entry_field()
    read_at = time.monotonic() - 0.25  # the entry was read a quarter second ago (a lease wait)
    assignment = tracing.dispatched(field, since=read_at, attempt=1)
    with tracing.span("attempt", parent=assignment):
        pass
    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert set(by_name) == {"client", "submit", "imagemesh.gateway.dispatch", "attempt"}
    trace_ids = {s.context.trace_id for s in by_name.values()}
    assert len(trace_ids) == 1
    assert by_name["submit"].parent.span_id == by_name["client"].context.span_id
    assert by_name["imagemesh.gateway.dispatch"].parent.span_id == by_name["submit"].context.span_id
    assert by_name["attempt"].parent.span_id == by_name["imagemesh.gateway.dispatch"].context.span_id
    dispatch = by_name["imagemesh.gateway.dispatch"]
    assert (dispatch.end_time - dispatch.start_time) / 1e9 >= 0.2  # the wait since the read is in it


# --- across real processes -------------------------------------------------------------------------

class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector on 127.0.0.1: the spans the mesh's processes export."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []  # (service.name, span)

    async def Export(self, request, context):
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope in resource_spans.scope_spans:
                self.spans.extend((service, s) for s in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def collector():
    servicer = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    servicer.endpoint = f"http://127.0.0.1:{port}"
    yield servicer
    await server.stop(0)


@pytest.fixture
async def replicate():
    """A Replicate stand-in that answers at once and records each request's traceparent."""
    seen: list[str | None] = []

    async def create(request: web.Request) -> web.Response:
        seen.append(request.headers.get("traceparent"))
        return web.json_response({"id": f"p{len(seen)}", "status": "succeeded",
                                  "output": ["https://replicate.delivery/x/out.png"]}, status=201)

    app = web.Application()
    app.router.add_post("/v1/models/{owner}/{name}/predictions", create)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_one_trace_from_client_submit_to_the_provider_request(mesh_factory, collector, replicate, spans):
    provider_url, traceparents = replicate
    otel = {"IMAGEMESH_TRACING": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    m = mesh_factory(IMAGEMESH_DEFAULT_PROVIDERS="replicate", IMAGEMESH_KEY_LIMITS="replicate=4",
                     IMAGEMESH_REPLICATE_BASE_URL=provider_url, **otel,
                     # Storage off: the fake's output URL (not on 127.0.0.1) is passed on, never fetched.
                     IMAGEMESH_STORAGE_URL="none")
    gw = m.start_gateway()
    worker = m.start_worker()
    async with Client(m.address, CLIENT_KEY) as c:
        task = pb.Task(generate=pb.GenerateSpec(prompt="a fox", model="acme/painter"))
        events = [e async for e in c.submit([task], credentials={"replicate": "r8_trace_token_0123456789"})]
    assert events[-1].summary.succeeded == 1, events[-1]
    client_span, = [s for s in spans.get_finished_spans() if s.name == "imagemesh.client.submit"]
    trace_id = format(client_span.context.trace_id, "032x")

    # The provider's request carries the client's trace.
    assert len(traceparents) == 1 and traceparents[0] is not None
    version, provider_trace, provider_parent, _flags = traceparents[0].split("-")
    assert provider_trace == trace_id

    # Each hop exported its span (batched every 100 ms), each the child of the one before.
    chain = ["imagemesh.gateway.SubmitBatch", "imagemesh.gateway.dispatch", "imagemesh.worker.attempt",
             "imagemesh.provider.generate"]
    for _ in range(100):
        if set(chain) <= {s.name for _service, s in collector.spans}:
            break
        await asyncio.sleep(0.1)
    by_name = {s.name: (service, s) for service, s in collector.spans}
    assert set(chain) <= set(by_name), sorted(by_name)
    assert by_name["imagemesh.gateway.SubmitBatch"][0] == "imagemesh-gateway"
    assert by_name["imagemesh.worker.attempt"][0] == "imagemesh-gen-worker"
    parent = client_span.context.span_id.to_bytes(8, "big")
    for name in chain:
        span = by_name[name][1]
        assert span.trace_id.hex() == trace_id, name
        assert span.parent_span_id == parent, f"{name} is not the child of the hop before it"
        parent = span.span_id
    assert provider_parent == parent.hex()  # the provider call's span is the request's parent
    for proc in (worker, gw):
        assert await asyncio.to_thread(proc.stop) == 0  # the collector keeps answering meanwhile
