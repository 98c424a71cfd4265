"""Request ids, trace context and the access log over the whole gRPC path: a grpc.aio server on
loopback, the real adapter, and a recording HTTP server as the gateway (so the test sees what
the gateway was sent). No exporter is configured here: the defaults a server starts with."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import secrets
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from rerank.server._app import RunningServer, start_server
from rerank.server._config import Settings, Upstream
from rerank.server._domain import ModelInfo, RerankOutcome, RerankQuery
from rerank.server._logs import ACCESS_LOGGER
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY
from tests.scripted_http import ScriptedServer
from tests.service.calls import access_records
from tests.service.gateways import rank_in_order

#: The access-log record's own fields, in this order, each always present (null when unknown).
ACCESS_FIELDS = (
    "request_id",
    "trace_id",
    "span_id",
    "caller",
    "method",
    "model",
    "documents",
    "top_n",
    "status",
    "reason",
    "incident",
    "duration_ms",
    "upstream_attempts",
    "windows",
    "cached",
    "cost",
)
SETTINGS = Settings(port=0, grace_period=2, upstream=Upstream.GATEWAY, api_key="test-key")


@pytest.fixture
async def gateway() -> AsyncIterator[ScriptedServer]:
    async with ScriptedServer(rank_in_order) as server:
        yield server


@pytest.fixture
async def serve(gateway: ScriptedServer) -> AsyncIterator[Any]:
    """Start servers forwarding to `gateway`; stop them all at the end."""
    started: list[RunningServer] = []

    async def start(**changes: Any) -> tuple[RunningServer, Any]:
        reranker = changes.pop("reranker", None)
        settings = dataclasses.replace(SETTINGS, gateway_url=gateway.url, **changes)
        running = await start_server(settings, reranker=reranker)
        started.append(running)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        closing.append(channel)
        return running, pb_grpc.RerankServiceStub(channel)

    closing: list[grpc.aio.Channel] = []
    yield start
    for channel in closing:
        await channel.close()
    for running in started:
        await running.stop()


def seed(**changes: Any) -> pb.RerankRequest:
    request = pb.RerankRequest(
        model=SEED_MODEL, query=SEED_QUERY, documents=[pb.Document(text=d) for d in SEED_DOCUMENTS]
    )
    for name, value in changes.items():
        setattr(request, name, value)
    return request


async def test_the_request_id_is_the_callers_or_a_new_one_and_comes_back_on_errors_too(
    serve: Any,
) -> None:
    _, stub = await serve(auth_tokens=frozenset({"caller-token"}))
    token = (("authorization", "Bearer caller-token"),)

    async def request_id(request: pb.RerankRequest, metadata: Sequence[tuple[str, str]]) -> str:
        call = stub.Rerank(request, metadata=metadata, timeout=10)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call
        trailing = await call.trailing_metadata()
        (value,) = [v for k, v in trailing if k == "x-request-id"]
        return str(value)

    assert await request_id(seed(), (*token, ("x-request-id", "caller-id-1"))) == "caller-id-1"
    assert re.fullmatch("[0-9a-f]{32}", await request_id(seed(), token))
    new = await request_id(seed(), (*token, ("x-request-id", "x" * 129)))  # not an id: replaced
    assert re.fullmatch("[0-9a-f]{32}", new)
    # A refused call and an invalid one keep it, beside the error's details.
    assert await request_id(seed(), (("x-request-id", "no-token"),)) == "no-token"
    invalid = stub.Rerank(seed(query=""), metadata=(*token, ("x-request-id", "bad")), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await invalid
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    keys = [k for k, _ in await invalid.trailing_metadata()]
    assert ("x-request-id" in keys, "grpc-status-details-bin" in keys) == (True, True)


async def test_the_gateway_joins_the_callers_trace_but_never_gets_its_baggage(
    serve: Any, gateway: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    _, stub = await serve()
    trace_id = secrets.token_hex(16)
    await stub.Rerank(
        seed(),
        metadata=(
            ("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-00"),
            ("baggage", "tenant=acme"),
        ),
        timeout=10,
    )
    await stub.Rerank(seed(query="another query"), timeout=10)  # no trace context: a new one
    (joined, fresh) = access_records(caplog)
    (sent_joined, sent_fresh) = [r.headers for r in gateway.requests]
    # Not sampled, nothing exported: the gateway's parent is our server span, the only one.
    assert sent_joined["traceparent"] == f"00-{trace_id}-{joined['span_id']}-00"
    assert sent_fresh["traceparent"].startswith(f"00-{fresh['trace_id']}-{fresh['span_id']}-")
    assert fresh["trace_id"] != trace_id
    assert "baggage" not in sent_joined
    assert "baggage" not in sent_fresh


class CountingProcessor(SpanProcessor):
    def __init__(self) -> None:
        self.started: list[str] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.started.append(span.name)

    def on_end(self, span: ReadableSpan) -> None:
        pass


async def test_without_an_exporter_only_a_callers_sampled_trace_is_recorded(
    serve: Any, gateway: ScriptedServer
) -> None:
    running, stub = await serve(window_sizes={"cohere": 2})  # three documents: two windows
    spans = CountingProcessor()
    assert running.tracer_provider is not None
    running.tracer_provider.add_span_processor(spans)
    unsampled = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"
    await stub.Rerank(seed(), timeout=10)
    await stub.Rerank(seed(query="q2"), metadata=(("traceparent", unsampled),), timeout=10)
    assert spans.started == []  # no span to record was made, not even the children
    sampled = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    await stub.Rerank(seed(query="q3"), metadata=(("traceparent", sampled),), timeout=10)
    assert sorted(spans.started) == sorted(
        ["rerank.v1.RerankService/Rerank", "rerank.cache.lookup"] + ["rerank.window", "POST"] * 2
    )
    # ... so the sampled flag reaches the gateway as the caller set it.
    assert gateway.requests[-1].headers["traceparent"].endswith("-01")


async def test_a_call_without_a_trace_context_starts_its_own_unsampled_trace(
    serve: Any, gateway: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    running, stub = await serve()
    assert not running.tracer_provider.sampler.should_sample(None, 1, "x").decision.is_sampled()
    await stub.Rerank(seed(), timeout=10)
    await stub.Rerank(seed(query="q2"), timeout=10)
    sent = [request.headers["traceparent"].split("-") for request in gateway.requests]
    logged = [(record["trace_id"], record["span_id"]) for record in access_records(caplog)]
    # Each call its own trace, never sampled; the log names the trace the gateway joins.
    assert [(version, flags) for version, _, _, flags in sent] == [("00", "00")] * 2
    assert [trace_id for _, trace_id, _, _ in sent] == [trace_id for trace_id, _ in logged]
    assert len({trace_id for trace_id, _ in logged}) == 2
    assert all(int(trace_id, 16) and int(span_id, 16) for trace_id, span_id in logged)


async def test_each_request_of_a_batch_is_a_span_holding_its_own_work(
    serve: Any, gateway: ScriptedServer
) -> None:
    """Under a sampled BatchRerank's server span, one span per request, in which its cache
    lookup and gateway attempt happen; a failed request's span says why."""
    running, stub = await serve()
    exported = InMemorySpanExporter()
    assert running.tracer_provider is not None
    running.tracer_provider.add_span_processor(SimpleSpanProcessor(exported))
    sampled = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    batch = pb.BatchRerankRequest(requests=[seed(), seed(query=""), seed(query="Berlin?")])
    await stub.BatchRerank(batch, metadata=(("traceparent", sampled),), timeout=10)

    spans = exported.get_finished_spans()
    (server,) = [s for s in spans if s.name == "rerank.v1.RerankService/BatchRerank"]
    requests = sorted(
        (s for s in spans if s.name == "rerank.batch.request"),
        key=lambda s: s.attributes["rerank.batch.index"] if s.attributes else -1,
    )
    assert [r.parent.span_id if r.parent else None for r in requests] == [
        server.context.span_id
    ] * 3
    ok, invalid, berlin = requests
    for answered in (ok, berlin):
        children = sorted(
            s.name for s in spans if s.parent and s.parent.span_id == answered.context.span_id
        )
        assert children == ["POST", "rerank.cache.lookup"], children
        assert answered.attributes is not None
        assert answered.attributes["rpc.grpc.status_code"] == 0
    assert invalid.attributes is not None
    assert invalid.attributes["error.type"] == "INVALID_REQUEST"
    assert invalid.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    # A caller's mistake is not the server's failure, as for a server span.
    assert invalid.status.status_code is StatusCode.UNSET
    assert len(gateway.requests) == 2


async def test_every_call_writes_one_access_record_with_its_facts(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    running, stub = await serve()
    request = seed(top_n=2)
    await stub.Rerank(request, metadata=(("x-request-id", "first"),), timeout=10)
    await stub.Rerank(request, metadata=(("x-request-id", "again"),), timeout=10)  # cached
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    first, again, checked = access_records(caplog)
    assert list(first) == list(ACCESS_FIELDS)
    assert {k: v for k, v in first.items() if k not in ("trace_id", "span_id", "duration_ms")} == {
        "request_id": "first",
        "caller": None,
        "method": "rerank.v1.RerankService/Rerank",
        "model": SEED_MODEL,
        "documents": 3,
        "top_n": 2,
        "status": "OK",
        "reason": None,
        "incident": None,
        "upstream_attempts": 1,
        "windows": 1,
        "cached": False,
        "cost": "0.001",
    }
    assert first["duration_ms"] > 0
    assert (again["cached"], again["upstream_attempts"], again["windows"], again["cost"]) == (
        True,
        0,
        0,
        "0",
    )
    # Health checks are logged, but not traced: a prober would fill a trace store.
    assert (checked["method"], checked["status"]) == ("grpc.health.v1.Health/Check", "OK")
    assert (checked["trace_id"], checked["span_id"]) == (None, None)


async def test_successes_are_sampled_failures_always_written(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    _, stub = await serve(access_log_success_sample=0.0)
    for _ in range(3):
        await stub.Rerank(seed(), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Rerank(seed(model="not a slug"), timeout=10)
    (failed,) = access_records(caplog)
    assert (failed["status"], failed["reason"]) == ("INVALID_ARGUMENT", "INVALID_REQUEST")
    assert failed["model"] is None  # not a valid slug: not written anywhere
    assert failed["documents"] == 3


async def test_a_named_callers_name_is_logged_never_its_token(
    serve: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    token = f"tok-{secrets.token_hex(8)}"
    callers = tmp_path / "callers.toml"
    callers.write_text(f'[callers.search-team]\ntoken = "{token}"\n')
    _, stub = await serve(callers_file=str(callers), auth_tokens=frozenset({"unnamed-token"}))
    await stub.Rerank(seed(), metadata=(("authorization", f"Bearer {token}"),), timeout=10)
    await stub.Rerank(seed(), metadata=(("authorization", "Bearer unnamed-token"),), timeout=10)
    named, unnamed = access_records(caplog)
    assert (named["caller"], unnamed["caller"]) == ("search-team", None)
    assert token not in caplog.text


class Broken:
    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        raise RuntimeError("a bug")

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
        return ()

    async def aclose(self) -> None:
        pass


async def test_an_unexpected_failure_keeps_its_incident_id(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    _, stub = await serve(reranker=Broken())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(seed(), timeout=10)
    incident = re.search(r"incident ([0-9a-f]{12})", caught.value.details() or "")
    assert incident is not None
    (record,) = access_records(caplog)
    assert (record["status"], record["incident"]) == ("INTERNAL", incident.group(1))
    assert f"(incident {incident.group(1)})" in caplog.text  # the traceback's line
