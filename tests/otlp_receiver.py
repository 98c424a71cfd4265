"""A real OTLP/HTTP trace receiver on a loopback port, and a recording HTTP proxy.

`OtlpReceiver` accepts `POST /v1/traces` as a collector does (protobuf, gzip or not), decodes
each body with opentelemetry-proto's `ExportTraceServiceRequest` and keeps the spans, so a test
checks what an exporter really sent. `RecordingProxy` stands between the rerank server and a
gateway and keeps each request's headers, so a test sees the `traceparent` the gateway got.
Both serve from a thread, so synchronous end-to-end tests and asyncio tests can use them alike.
"""

from __future__ import annotations

import gzip
import http.client
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver decoded it; ids in lower-case hex."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str  # SERVER, CLIENT, INTERNAL, ...
    attributes: dict[str, Any]
    status: str  # UNSET, OK, ERROR
    status_message: str
    events: tuple[tuple[str, dict[str, Any]], ...]
    resource: dict[str, Any] = field(default_factory=dict)

    def every_text(self) -> str:
        """All of the span's names, keys and values, for searching."""
        parts = [self.name, self.status_message, repr(self.attributes), repr(self.resource)]
        parts.extend(f"{name} {attributes!r}" for name, attributes in self.events)
        return "\n".join(parts)


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which) if which else None


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=ProtoSpan.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        status=ProtoStatus.StatusCode.Name(span.status.code).removeprefix(
                            "STATUS_CODE_"
                        ),
                        status_message=span.status.message,
                        events=tuple(
                            (e.name, {a.key: _value(a.value) for a in e.attributes})
                            for e in span.events
                        ),
                        resource=resource,
                    )
                )
    return spans


class _Served:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread: `with X() as x:`."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.changed = threading.Condition()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _OtlpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        receiver: OtlpReceiver = self.server.owner  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces" or self.headers.get("content-type") != (
            "application/x-protobuf"
        ):
            self.send_error(404)
            return
        spans = decode(body)
        with receiver.changed:
            receiver.spans.extend(spans)
            receiver.changed.notify_all()
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class OtlpReceiver(_Served):
    """`OTEL_EXPORTER_OTLP_ENDPOINT` = `.origin`; the spans received so far in `.spans`."""

    handler = _OtlpHandler

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[ReceivedSpan] = []

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self.changed:
            return [s for s in self.spans if s.trace_id == trace_id]


@dataclass(frozen=True)
class ForwardedRequest:
    method: str
    path: str
    headers: dict[str, str]


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        proxy: RecordingProxy = self.server.owner  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        with proxy.changed:
            proxy.requests.append(ForwardedRequest(self.command, self.path, headers))
            proxy.changed.notify_all()
        upstream = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=30)
        try:
            upstream.request(self.command, self.path, body, headers)
            response = upstream.getresponse()
            reply = response.read()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(name, value)
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
        finally:
            upstream.close()

    do_GET = do_POST = _forward

    def log_message(self, format: str, *args: Any) -> None:
        pass


class RecordingProxy(_Served):
    """Forwards every request to the host of `target` (a base URL, e.g. a mock gateway's
    `.../v3/ai`), keeping its method, path and headers in `.requests`; `.url` is the same base
    URL through the proxy (same path, so the protocol version it names stays the same)."""

    handler = _ProxyHandler

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = urllib.parse.urlsplit(target)
        self.requests: list[ForwardedRequest] = []

    @property
    def url(self) -> str:
        return self.origin + self.target.path
