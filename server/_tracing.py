"""Traces: an OpenTelemetry span tree per call, and the W3C trace context in and out (the tree,
each span's attributes, what is not traced: docs/operating.md#traces).

A call that is not sampled stays cheap: no child span is made under a span that does not record
(under every standard sampler a child of an unsampled span is unsampled too, and nobody would
ever see it). `baggage` is read in and never sent on: the gateway is on the other side of a
trust boundary. Spans never carry a credential, a header's value, a URL, a query or a document.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata
from typing import TYPE_CHECKING

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:  # config imports the window layer, which imports this module
    from rerank.server._config import Settings

TRACER_NAME = "rerank.server"
DEFAULT_SERVICE_NAME = "rerank-service"
#: The metadata keys that carry a caller's trace context.
TRACE_CONTEXT_KEYS = frozenset({"traceparent", "tracestate", "baggage"})
CACHE_LOOKUP_SPAN = "rerank.cache.lookup"
WINDOW_SPAN = "rerank.window"
#: One request of a BatchRerank, under the batch's server span.
BATCH_REQUEST_SPAN = "rerank.batch.request"
#: An OpenTelemetry context key: the retry an upstream attempt is (1 for the first retry), set
#: by the retry layer for the gateway adapter's `http.request.resend_count`.
RESEND_COUNT_KEY = otel_context.create_key("rerank.resend_count")

#: `OTEL_TRACES_SAMPLER`'s standard values (the ones the SDK knows), and whether each takes
#: `OTEL_TRACES_SAMPLER_ARG`.
SAMPLERS: Mapping[str, bool] = {
    "always_on": False,
    "always_off": False,
    "traceidratio": True,
    "parentbased_always_on": False,
    "parentbased_always_off": False,
    "parentbased_traceidratio": True,
}

# OpenTelemetry's gRPC conventions: the statuses that mark a server span as failed (the others
# are the caller's doing).
SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

# Both W3C propagators, and the SDK's id generator, are stateless: one of each serves every call.
_TRACE_CONTEXT = TraceContextTextMapPropagator()
_BAGGAGE = W3CBaggagePropagator()
_IDS = RandomIdGenerator()


def tracer_provider(settings: Settings) -> TracerProvider:
    """This server's own tracer provider (each worker process makes its own, after the fork);
    the SDK reads the standard `OTEL_*` environment itself. Exporting nothing, only a caller's
    sampled trace is recorded, so that the sampled flag reaches the gateway as the caller set
    it, and no CPU goes to spans nobody receives."""
    resource = Resource.create({SERVICE_VERSION: _version()})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(
        sampler=None if settings.export_traces else ParentBased(ALWAYS_OFF),
        resource=resource,
        # Shut down by the server's stop() (and so flushed); an atexit hook per provider would
        # pile up in a test process that starts many servers.
        shutdown_on_exit=False,
    )
    if settings.export_traces:
        # Imported only here: a server that exports nothing never loads requests & co.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def _version() -> str:
    try:
        return metadata.version("rerank-service")
    except metadata.PackageNotFoundError:  # a checkout without an install
        return "0+unknown"


def caller_context(carrier: Mapping[str, str]) -> otel_context.Context:
    """The caller's trace context and baggage, from the metadata keys in `TRACE_CONTEXT_KEYS`."""
    context = _TRACE_CONTEXT.extract(carrier)
    if "baggage" in carrier:
        context = _BAGGAGE.extract(carrier, context=context)
    return context


def unrecorded_root() -> Span:
    """The server span the tracer of a server that exports nothing makes for a call without a
    caller's trace context (its parent-based sampler drops every new trace): new ids, not
    sampled, nothing recorded. Made here, without the tracer's sampling round: a fifth of it."""
    ids = _IDS
    return trace.NonRecordingSpan(
        SpanContext(ids.generate_trace_id(), ids.generate_span_id(), False)
    )


def child_span(tracer: Tracer, name: str, kind: SpanKind = SpanKind.INTERNAL) -> Span:
    """A new span under the current one, or, when the current one does not record, that span
    itself: ending it or setting attributes on it does nothing, and its context is the right
    parent to hand on."""
    parent = trace.get_current_span()
    if not parent.is_recording():
        return parent
    return tracer.start_span(name, kind=kind)


def inject_trace_context(headers: dict[str, str], span_context: SpanContext) -> None:
    """Add the W3C `traceparent` (and `tracestate`) naming `span_context` as the parent.

    Written here rather than by the propagator: a fifth of its cost on the hot path, and it
    can carry nothing else (baggage in particular) by construction. A test checks it against
    `TraceContextTextMapPropagator`.
    """
    if not span_context.is_valid:
        return
    headers["traceparent"] = (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}"
        f"-{span_context.trace_flags:02x}"
    )
    if span_context.trace_state:
        headers["tracestate"] = span_context.trace_state.to_header()


def end_span(
    span: Span, attributes: dict[str, str | int | bool], code: grpc.StatusCode, reason: str | None
) -> None:
    """Set `attributes` on `span` with the outcome, `code`: on a failure, `error.type` (the
    ErrorInfo `reason`, never the message, which may quote the gateway), and an error status
    when the server or the gateway failed."""
    attributes["rpc.grpc.status_code"] = code.value[0]
    if code is not grpc.StatusCode.OK:
        attributes["error.type"] = reason or code.name
    span.set_attributes(attributes)
    if code in SERVER_ERROR_CODES:
        span.set_status(Status(StatusCode.ERROR, reason or code.name))


def traces_exported(environ: Mapping[str, str]) -> bool:
    """Whether spans are exported. The SDK reads these variables itself: this only refuses, at
    start, a value it cannot honour."""
    from rerank.server._config import SettingError, is_http_url  # _config imports this module

    def read(name: str) -> str:
        return environ.get(name, "").strip()

    exporter = read("OTEL_TRACES_EXPORTER").lower() or "otlp"
    protocol = read("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or read("OTEL_EXPORTER_OTLP_PROTOCOL")
    sampler = read("OTEL_TRACES_SAMPLER").lower()
    ratio = read("OTEL_TRACES_SAMPLER_ARG") if SAMPLERS.get(sampler) else ""
    endpoints = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    try:
        fraction = 0 <= float(ratio or 0) <= 1
    except ValueError:
        fraction = False
    if exporter not in ("otlp", "none"):
        refused = f"OTEL_TRACES_EXPORTER must be otlp or none, got {exporter!r}"
    elif protocol not in ("", "http/protobuf"):
        refused = f"OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is supported, got {protocol!r}"
    elif wrong := [name for name in endpoints if read(name) and not is_http_url(read(name))]:
        refused = f"{wrong[0]} must be an http:// or https:// URL, got {read(wrong[0])!r}"
    elif sampler not in ("", *SAMPLERS):
        refused = f"OTEL_TRACES_SAMPLER must be one of {', '.join(SAMPLERS)}, got {sampler!r}"
    elif not fraction:
        refused = f"OTEL_TRACES_SAMPLER_ARG must be a number in [0, 1], got {ratio!r}"
    else:
        return exporter == "otlp" and any(map(read, endpoints))
    raise SettingError(refused)
