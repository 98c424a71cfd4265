"""The pieces of traces and logs on their own: the OpenTelemetry settings, the samplers, the
outgoing `traceparent`, and the two log formats."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import grpc
import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ParentBased,
    ParentBasedTraceIdRatio,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from rerank.server import _logs
from rerank.server.__main__ import settings_from
from rerank.server._calls import CallRecord, close_call, open_call
from rerank.server._config import Settings
from rerank.server._logs import AccessLog, JsonFormatter, TextFormatter, configure_logging
from rerank.server._tracing import (
    SAMPLERS,
    caller_context,
    inject_trace_context,
    tracer_provider,
)

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331


def test_spans_are_exported_when_an_otlp_endpoint_is_set() -> None:
    """Where to (and the `/v1/traces` appended to the base endpoint) is the SDK's to read."""

    def exported(**environ: str) -> bool:
        return settings_from([], environ).export_traces

    assert not exported()  # nothing configured: nothing exported
    assert exported(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318/")
    assert exported(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="https://traces.example/otlp")
    assert not exported(OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318", OTEL_TRACES_EXPORTER="none")
    sampled = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    assert not exported(**sampled)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        ({"RERANK_LOG_FORMAT": "xml"}, "RERANK_LOG_FORMAT"),
        ({"RERANK_ACCESS_LOG_SUCCESS_SAMPLE": "1.5"}, "RERANK_ACCESS_LOG_SUCCESS_SAMPLE"),
        ({"RERANK_ACCESS_LOG_SUCCESS_SAMPLE": "most"}, "RERANK_ACCESS_LOG_SUCCESS_SAMPLE"),
    ],
)
def test_a_bad_telemetry_setting_is_a_usage_error_naming_it(
    environ: dict[str, str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        settings_from([], environ)
    assert exited.value.code == 2
    assert named in capsys.readouterr().err


def test_the_default_sampler_records_only_what_someone_receives() -> None:
    assert set(SAMPLERS) == {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
    # Exporting: the SDK's default. Not exporting: only a caller's sampled trace is recorded.
    exporting = tracer_provider(Settings(export_traces=True))
    assert exporting.sampler.get_description() == (
        "ParentBased{root:AlwaysOnSampler,remoteParentSampled:AlwaysOnSampler,"
        "remoteParentNotSampled:AlwaysOffSampler,localParentSampled:AlwaysOnSampler,"
        "localParentNotSampled:AlwaysOffSampler}"
    )
    exporting.shutdown()
    off = tracer_provider(Settings()).sampler
    assert off.get_description() == ParentBased(ALWAYS_OFF).get_description()


def test_the_sdk_reads_the_sampler_when_exporting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    provider = tracer_provider(Settings(export_traces=True))
    ratio = ParentBasedTraceIdRatio(0.5).get_description()
    assert provider.sampler.get_description() == ratio
    provider.shutdown()


def test_the_service_is_named_unless_the_environment_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    provider = tracer_provider(Settings())
    assert provider.resource.attributes["service.name"] == "rerank-service"
    provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "reranker-eu")
    provider = tracer_provider(Settings())
    assert provider.resource.attributes["service.name"] == "reranker-eu"
    provider.shutdown()


@pytest.mark.parametrize(
    "span_context",
    [
        SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(1)),
        SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(0)),
        SpanContext(
            TRACE_ID,
            SPAN_ID,
            is_remote=False,
            trace_flags=TraceFlags(3),
            trace_state=TraceState([("vendor", "opaque"), ("other", "x")]),
        ),
    ],
)
def test_the_outgoing_traceparent_is_what_the_w3c_propagator_writes(
    span_context: SpanContext,
) -> None:
    ours: dict[str, str] = {}
    inject_trace_context(ours, span_context)
    theirs: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(
        theirs, context=trace.set_span_in_context(NonRecordingSpan(span_context))
    )
    assert ours == theirs


def test_no_traceparent_without_a_trace_and_never_the_baggage() -> None:
    headers: dict[str, str] = {}
    inject_trace_context(headers, trace.INVALID_SPAN_CONTEXT)
    assert headers == {}
    incoming = caller_context(
        {"traceparent": f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01", "baggage": "tenant=acme"}
    )
    # The baggage is read into the call's context...
    assert baggage.get_all(incoming) == {"tenant": "acme"}
    # ...and what goes to the gateway is the trace context alone.
    inject_trace_context(headers, trace.get_current_span(incoming).get_span_context())
    assert set(headers) == {"traceparent"}


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging replaces the root logger's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_is_one_object_per_line_for_every_record(
    root_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("INFO", "json")
    logging.getLogger("some.library").warning("two\nlines")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("rerank.server").exception("failed (incident %s)", "abc123")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert {k: first[k] for k in ("level", "logger", "message")} == {
        "level": "WARNING",
        "logger": "some.library",
        "message": "two\nlines",
    }
    assert first["time"].endswith("Z")
    assert second["message"] == "failed (incident abc123)"
    assert "ValueError: boom" in second["exception"]


def test_a_record_inside_a_call_carries_the_calls_ids() -> None:
    record = logging.LogRecord(
        "rerank.server._resilience", logging.INFO, "", 0, "retrying", (), None
    )
    span = NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, is_remote=False))
    opened = open_call(CallRecord("req-7"))
    attached = otel_context.attach(trace.set_span_in_context(span))
    try:
        entry = json.loads(JsonFormatter().format(record))
    finally:
        otel_context.detach(attached)
        close_call(opened)
    assert (entry["request_id"], entry["trace_id"], entry["span_id"]) == (
        "req-7",
        f"{TRACE_ID:032x}",
        f"{SPAN_ID:016x}",
    )
    outside = json.loads(JsonFormatter().format(record))
    assert "request_id" not in outside
    assert "trace_id" not in outside


def test_text_keeps_the_classic_line_and_appends_an_access_records_fields() -> None:
    formatter = TextFormatter("%(levelname)s %(name)s: %(message)s")
    plain = logging.LogRecord("rerank.server", logging.INFO, "", 0, "hello %s", ("you",), None)
    assert formatter.format(plain) == "INFO rerank.server: hello you"
    access = logging.LogRecord("rerank.access", logging.INFO, "", 0, "m OK", (), None)
    fields: dict[str, Any] = {"request_id": "r1", "model": None, "cached": False, "documents": 3}
    access.fields = fields
    assert formatter.format(access) == (
        "INFO rerank.access: m OK request_id=r1 model=- cached=false documents=3"
    )


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_an_access_line_written_without_a_record_is_the_line_the_formatter_makes(
    root_logging: None, monkeypatch: pytest.MonkeyPatch, log_format: str
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("INFO", log_format)
    call = CallRecord("req-9", model="cohere/rerank-v3.5", documents=3, upstream_attempts=1)
    call.cost = Decimal("0.001")
    # Written by the handler itself: the logger's record handling is never reached.
    monkeypatch.setattr(logging.Logger, "handle", _never)
    monkeypatch.setattr(_logs.time, "time", lambda: 1_700_000_000.25)
    span_context = SpanContext(TRACE_ID, SPAN_ID, is_remote=False)
    AccessLog().write("rerank.v1.RerankService/Rerank", call, grpc.StatusCode.OK, span_context, 0.5)
    [line] = stream.getvalue().splitlines()

    # The same call through a capturing handler: a record, which the formatter writes.
    captured: list[logging.LogRecord] = []
    capture = logging.Handler()
    capture.emit = captured.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(capture)
    monkeypatch.undo()
    AccessLog().write("rerank.v1.RerankService/Rerank", call, grpc.StatusCode.OK, span_context, 0.5)
    [record] = captured
    record.created, record.msecs = 1_700_000_000.25, 250.0
    formatter = logging.getLogger().handlers[0].formatter
    assert formatter is not None
    assert line == formatter.format(record)
    assert "request_id=req-9" in line or json.loads(line)["request_id"] == "req-9"


def _never(*_: object) -> None:
    raise AssertionError("an access line went through a LogRecord")
