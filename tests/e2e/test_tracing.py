"""Traces end to end: a real server process (two workers) exports over OTLP/HTTP to a real
receiver on loopback, and forwards to the mock gateway process through a recording proxy, so
the test sees both the spans we sent and the `traceparent` the gateway got."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import grpc
import pytest

from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.e2e.processes import start_mock_gateway, start_server
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan, RecordingProxy
from tools.processes import Process
from tools.waiting import until

pytestmark = pytest.mark.e2e

SERVER_SPAN = "rerank.v1.RerankService/Rerank"
QUERY = "Which city is the capital of France?"
DOCUMENTS = (
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "Madrid is the capital of Spain.",
    "Rome is the capital of Italy.",
    "Lisbon is the capital of Portugal.",
)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


def traced_server(
    processes: list[Process], receiver: OtlpReceiver, gateway_url: str, **env: str
) -> tuple[str, Process]:
    target = start_server(
        processes,
        "--workers",
        "2",
        "--gateway-url",
        gateway_url,
        env={
            "AI_GATEWAY_API_KEY": "e2e-key",
            "RERANK_LOG_FORMAT": "json",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.origin,
            "OTEL_SERVICE_NAME": "rerank-e2e",
            "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: spans leave soon after they end
            **env,
        },
    )
    return target, processes[-1]


def access_lines(server: Process) -> list[dict[str, object]]:
    lines = []
    for line in server.output.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record["logger"] == "rerank.access":
                lines.append(record)
    return lines


def test_a_windowed_call_with_a_retry_is_one_trace_the_gateway_joins(
    processes: list[Process], receiver: OtlpReceiver
) -> None:
    with RecordingProxy(start_mock_gateway(processes)) as proxy:
        target, server = traced_server(
            processes, receiver, proxy.url, RERANK_WINDOW_SIZES="cohere=2"
        )
        trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
        request = pb.RerankRequest(
            model="cohere/rerank-v3.5",
            query=QUERY,
            documents=[pb.Document(text=d) for d in DOCUMENTS],
            top_n=2,
        )
        # The first upstream request of the call (one window's) is rate-limited once.
        request.provider_options.update(
            {"mockGateway": {"fault": "rate_limit", "retryAfterMs": 10, "times": 1}}
        )
        with grpc.insecure_channel(target) as channel:
            response, call = pb_grpc.RerankServiceStub(channel).Rerank.with_call(
                request,
                timeout=20,
                metadata=(
                    ("traceparent", f"00-{trace_id}-{caller_span}-01"),
                    ("tracestate", "caller=opaque"),
                    ("baggage", "tenant=acme,session=baggage-must-stay-here"),
                    ("x-request-id", "e2e-request-1"),
                ),
            )
        assert response.ranking[0].document.text == "Paris is the capital of France."
        assert ("x-request-id", "e2e-request-1") in tuple(call.trailing_metadata())

        # The server span ends last, after every child was exported or queued.
        until(
            lambda: any(s.name == SERVER_SPAN for s in receiver.trace(trace_id)),
            "the server span",
            timeout=30,
            changed=receiver.changed,
        )
        spans = receiver.trace(trace_id)
        (root,) = [s for s in spans if s.name == SERVER_SPAN]
        assert (root.kind, root.parent_span_id) == ("SERVER", caller_span)
        assert root.resource["service.name"] == "rerank-e2e"
        assert root.attributes == {
            "rpc.system": "grpc",
            "rpc.service": "rerank.v1.RerankService",
            "rpc.method": "Rerank",
            "rpc.grpc.status_code": 0,
            "rerank.request_id": "e2e-request-1",
            "rerank.model": "cohere/rerank-v3.5",
            "rerank.documents": 5,
            "rerank.top_n": 2,
            "rerank.cached": False,
            "rerank.upstream_attempts": 4,
            "rerank.windows": 3,
        }
        children = [s for s in spans if s.parent_span_id == root.span_id]
        (lookup,) = [s for s in children if s.name == "rerank.cache.lookup"]
        assert lookup.attributes == {"rerank.cache.result": "miss"}
        windows = sorted(
            (s for s in children if s.name == "rerank.window"),
            key=lambda s: s.attributes["rerank.window.index"],
        )
        assert [(w.attributes["rerank.window.first_document"], w.attributes["rerank.documents"])
                for w in windows] == [(0, 2), (2, 2), (4, 1)]  # fmt: skip
        attempts = {w.span_id: [s for s in spans if s.parent_span_id == w.span_id] for w in windows}
        assert len(spans) == 1 + 1 + 3 + 4
        assert sorted(len(a) for a in attempts.values()) == [1, 1, 2]
        (retried,) = [w for w in windows if len(attempts[w.span_id]) == 2]
        assert [e[0] for e in retried.events] == ["retry"]
        assert retried.events[0][1]["error.type"] == "UPSTREAM_RATE_LIMITED"
        clients = [s for a in attempts.values() for s in a]
        assert {s.kind for s in clients} == {"CLIENT"}
        failed = [s for s in clients if s.status == "ERROR"]
        assert [(s.attributes["http.response.status_code"], s.attributes["error.type"])
                for s in failed] == [(429, "429")]  # fmt: skip
        (resent,) = [s for s in clients if "http.request.resend_count" in s.attributes]
        assert resent.attributes["http.request.resend_count"] == 1
        assert resent.parent_span_id == failed[0].parent_span_id == retried.span_id
        for client in clients:
            assert client.name == "POST"
            assert client.attributes["http.request.method"] == "POST"
            assert client.attributes["server.address"] == "127.0.0.1"
            assert "url.full" not in client.attributes

        # Every upstream request names its own attempt's span as the parent; baggage stays.
        reranks = [r for r in proxy.requests if r.path.endswith("/reranking-model")]
        assert sorted(r.headers["traceparent"] for r in reranks) == sorted(
            f"00-{trace_id}-{s.span_id}-01" for s in clients
        )
        assert {r.headers.get("tracestate") for r in reranks} == {"caller=opaque"}
        assert not [r for r in reranks if "baggage" in r.headers]

        # No span holds the query, a document, the key or the caller's baggage.
        every_text = "\n".join(s.every_text() for s in spans)
        for secret in (QUERY, *DOCUMENTS, "e2e-key", "baggage-must-stay-here", "acme"):
            assert secret not in every_text

        server.wait_for(r'"logger":"rerank\.access".*"request_id":"e2e-request-1"')
        (line,) = [r for r in access_lines(server) if r["request_id"] == "e2e-request-1"]
        assert (line["trace_id"], line["span_id"]) == (trace_id, root.span_id)
        assert {k: line[k] for k in ("status", "upstream_attempts", "windows", "cached")} == {
            "status": "OK",
            "upstream_attempts": 4,
            "windows": 3,
            "cached": False,
        }
        # The retry's own log line is found from the call's ids.
        retry_line = json.loads(server.wait_for(r'\{.*"message":"retrying after .*').group(0))
        assert (retry_line["request_id"], retry_line["trace_id"]) == ("e2e-request-1", trace_id)


def test_every_worker_exports_its_own_spans(
    processes: list[Process], receiver: OtlpReceiver
) -> None:
    target, _ = traced_server(processes, receiver, start_mock_gateway(processes))
    request = pb.RerankRequest(query=QUERY, documents=[pb.Document(text=d) for d in DOCUMENTS])
    trace_ids: list[str] = []

    def roots() -> list[ReceivedSpan]:
        with receiver.changed:
            return [s for s in receiver.spans if s.name == SERVER_SPAN]

    # A new connection per call: the kernel spreads connections (not calls) over the workers.
    for _ in range(40):
        trace_id = secrets.token_hex(16)
        trace_ids.append(trace_id)
        with grpc.insecure_channel(target) as channel:
            pb_grpc.RerankServiceStub(channel).Rerank(
                request,
                timeout=10,
                metadata=(("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),),
            )
        until(
            lambda: len(roots()) == len(trace_ids),
            "a root span per call",
            timeout=30,
            changed=receiver.changed,
        )
        instances = {s.resource["service.instance.id"] for s in roots()}
        if len(instances) == 2:
            break
    assert len(instances) == 2, "every call went to one worker"
    assert sorted(s.trace_id for s in roots()) == sorted(trace_ids)
