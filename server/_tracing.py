"""Traces: an OpenTelemetry span tree per call, and the W3C trace context in and out.

```
rerank.v1.RerankService/Rerank   SERVER    one per unary call (health checks excepted)
├── rerank.cache.lookup          INTERNAL  rerank.cache.result = hit | miss | coalesced
├── rerank.window                INTERNAL  one per window, only when a request is split
│   └── POST                     CLIENT    one per upstream attempt (HTTP conventions)
└── POST                         CLIENT    an unsplit request's attempts
```

The caller's `traceparent`/`tracestate` (and `baggage`) are read from the call's metadata, so the
server span joins the caller's trace; every upstream HTTP request carries a `traceparent` naming
the attempt's span as its parent, so the gateway's side joins it too. `baggage` is read into the
call's context and never sent on: the gateway is on the other side of a trust boundary.

The tracer provider always exists (made per server by `tracer_provider`, never global); spans are
exported over OTLP (HTTP/protobuf) only when an endpoint is configured (`Settings.export_traces`).
A call that is not sampled stays cheap: its server span is the SDK's non-recording span, and no
child span is made under a span that does not record (under every standard sampler a child of an
unsampled span is unsampled too, and nobody would ever see it). The gateway then gets the server
span's id as its parent, the only span of ours there is.

Spans carry counts, names and statuses: never a credential, a header's value, a URL's query, a
query's text or a document.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import Span, SpanContext, SpanKind, Tracer
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

# Both W3C propagators are stateless; one instance of each serves every call.
_TRACE_CONTEXT = TraceContextTextMapPropagator()
_BAGGAGE = W3CBaggagePropagator()


def tracer_provider(settings: Settings) -> TracerProvider:
    """This server's own tracer provider (each worker process makes its own, after the fork).

    The SDK reads the standard environment itself: where spans go and how
    (`OTEL_EXPORTER_OTLP_*`), the sampler (`OTEL_TRACES_SAMPLER`, `_ARG`; by default
    `parentbased_always_on`), `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (the service
    is `rerank-service` unless they name it) and `OTEL_BSP_*`. Exporting nothing, only a
    caller's sampled trace is recorded (`parentbased_always_off`), so that the sampled flag
    reaches the gateway as the caller set it, and no CPU goes to spans nobody receives.
    """
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
