"""The whole gRPC path: a grpc.aio server on a free loopback port, a real channel and stub,
and the bundled mock gateway behind the real adapter (the server's embedded default)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rerank.mock_gateway import score
from rerank.server._app import RunningServer, start_server
from rerank.server._config import Settings, Upstream
from rerank.server._domain import ModelInfo, RerankOutcome, RerankQuery
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY
from tests.scripted_http import Reply, Request, ScriptedServer
from tests.service.calls import MESSAGE_LIMIT, fault, seed_request, struct, unpacked


@pytest.fixture
async def running() -> AsyncIterator[RunningServer]:
    server = await start_server(Settings(port=0, grace_period=5))
    yield server
    await server.stop()


@pytest.fixture
async def channel(running: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{running.port}", options=MESSAGE_LIMIT
    ) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.RerankServiceStub:
    return pb_grpc.RerankServiceStub(channel)


async def test_the_seed_example(stub: pb_grpc.RerankServiceStub) -> None:
    response = await stub.Rerank(seed_request(), timeout=10)
    assert len(response.ranking) == 2
    first, second = response.ranking
    assert first.original_index == 0
    assert first.document.text == "Paris is the capital of France."
    assert first.score > second.score
    assert 0 <= second.score <= first.score <= 1
    assert response.model == SEED_MODEL
    assert response.id


async def test_without_top_n_every_document_comes_back_sorted(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    response = await stub.Rerank(seed_request(top_n=None), timeout=10)
    assert sorted(r.original_index for r in response.ranking) == [0, 1, 2]
    keys = [(-r.score, r.original_index) for r in response.ranking]
    assert keys == sorted(keys)
    for ranked in response.ranking:
        assert ranked.document.text == SEED_DOCUMENTS[ranked.original_index]


async def test_a_top_n_above_the_document_count_returns_all(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    response = await stub.Rerank(seed_request(top_n=50), timeout=10)
    assert len(response.ranking) == 3


async def test_ids_are_unique_and_the_default_model_fills_in(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    first = await stub.Rerank(seed_request(model=""), timeout=10)
    second = await stub.Rerank(seed_request(model=""), timeout=10)
    assert first.model == second.model == "cohere/rerank-v3.5"
    assert first.id != second.id
    assert [r.score for r in first.ranking] == [r.score for r in second.ranking]


async def test_object_documents_come_back_as_sent(stub: pb_grpc.RerankServiceStub) -> None:
    objects = [
        {"title": "Germany", "text": "Berlin is the capital of Germany.", "year": 1990},
        {"title": "France", "text": "Paris is the capital of France.", "tags": ["eu", 1]},
        {"title": "Spain", "text": "Madrid is the capital of Spain.", "meta": {"a": None}},
    ]
    request = pb.RerankRequest(
        query=SEED_QUERY, documents=[pb.Document(object=struct(o)) for o in objects], top_n=1
    )
    response = await stub.Rerank(request, timeout=10)
    (best,) = response.ranking
    assert best.original_index == 1
    assert best.document.object == struct(objects[1])


async def test_provider_options_reach_the_gateway(stub: pb_grpc.RerankServiceStub) -> None:
    """A fault requested through provider_options can only fire if they were forwarded."""
    request = seed_request(provider_options=fault(fault="error", status=403, type="forbidden"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(request, timeout=10)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


def too_many_documents() -> pb.RerankRequest:
    return seed_request(documents=[pb.Document(text="x")] * 10_001)


@pytest.mark.parametrize(
    ("request_factory", "field"),
    [
        (lambda: seed_request(query=""), "query"),
        (lambda: seed_request(query="   "), "query"),
        (lambda: seed_request(query="q" * (32 * 1024 + 1)), "query"),
        (lambda: seed_request(documents=[], query=""), "query"),
        (lambda: seed_request(documents=[], top_n=0), "top_n"),
        (too_many_documents, "documents"),
        (lambda: seed_request(top_n=0), "top_n"),
        (lambda: seed_request(top_n=-1), "top_n"),
        (lambda: seed_request(model="not a slug"), "model"),
        (lambda: seed_request(model="cohere"), "model"),
        (
            lambda: seed_request(
                documents=[pb.Document(text="a"), pb.Document(object=struct({"b": 1}))]
            ),
            "documents[1]",
        ),
        (lambda: seed_request(documents=[pb.Document(text="a"), pb.Document()]), "documents[1]"),
        (
            lambda: seed_request(documents=[pb.Document(text="a"), pb.Document(text="")]),
            "documents[1]",
        ),
        (
            lambda: seed_request(
                documents=[pb.Document(text="a")] * 17 + [pb.Document(text="x" * 70_000)]
            ),
            "documents[17]",
        ),
        (
            lambda: seed_request(
                top_n=None,
                documents=[pb.Document(object=struct({"score": float("nan")}))],
            ),
            "documents[0].object.score",
        ),
        (
            lambda: seed_request(provider_options={"cohere": {"x": [1, float("inf")]}}),
            "provider_options.cohere.x[1]",
        ),
        (lambda: seed_request(provider_options={"cohere": 5}), "provider_options.cohere"),
    ],
)
async def test_invalid_requests_name_the_field(
    stub: pb_grpc.RerankServiceStub, request_factory: Any, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(request_factory(), timeout=10)
    error = caught.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "")
    bad_request = unpacked(error, error_details_pb2.BadRequest)
    assert field in [v.field for v in bad_request.field_violations]
    # ...and the server is still there.
    assert (await stub.Rerank(seed_request(), timeout=10)).ranking


@pytest.mark.parametrize(
    ("spec", "code", "reason"),
    [
        (
            {"fault": "error", "status": 400, "type": "invalid_request_error", "message": "bad"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "UPSTREAM_INVALID_REQUEST",
        ),
        (
            {"fault": "error", "status": 401, "type": "authentication_error"},
            grpc.StatusCode.INTERNAL,
            "UPSTREAM_AUTHENTICATION",
        ),
        (
            {"fault": "error", "status": 403, "type": "forbidden"},
            grpc.StatusCode.PERMISSION_DENIED,
            "UPSTREAM_FORBIDDEN",
        ),
        (
            {"fault": "error", "status": 404, "type": "model_not_found"},
            grpc.StatusCode.NOT_FOUND,
            "MODEL_NOT_FOUND",
        ),
        (
            {"fault": "error", "status": 424, "type": "failed_dependency"},
            grpc.StatusCode.INTERNAL,
            "UPSTREAM_FAILED_DEPENDENCY",
        ),
        (
            {"fault": "rate_limit", "retryAfterMs": 1500},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "UPSTREAM_RATE_LIMITED",
        ),
        (
            {"fault": "error", "status": 500, "type": "internal_server_error"},
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_UNAVAILABLE",
        ),
        (
            {"fault": "error", "status": 503, "type": "brand_new_type"},
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_UNAVAILABLE",
        ),
        (
            {"fault": "error", "status": 418, "type": "brand_new_type"},
            grpc.StatusCode.UNKNOWN,
            "UPSTREAM_ERROR",
        ),
        (
            {"fault": "status_only", "status": 502, "body": "<html>Bad Gateway</html>"},
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_UNAVAILABLE",
        ),
        (
            {"fault": "malformed", "variant": "not_json"},
            grpc.StatusCode.INTERNAL,
            "UPSTREAM_PROTOCOL_ERROR",
        ),
        (
            {"fault": "malformed", "variant": "index_out_of_range"},
            grpc.StatusCode.INTERNAL,
            "UPSTREAM_PROTOCOL_ERROR",
        ),
        (
            {"fault": "malformed", "variant": "duplicate_index"},
            grpc.StatusCode.INTERNAL,
            "UPSTREAM_PROTOCOL_ERROR",
        ),
        (
            {"fault": "malformed", "variant": "error_envelope"},
            grpc.StatusCode.INTERNAL,
            "UPSTREAM_PROTOCOL_ERROR",
        ),
    ],
)
async def test_gateway_failures_become_their_status(
    stub: pb_grpc.RerankServiceStub, spec: dict[str, Any], code: grpc.StatusCode, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(seed_request(provider_options=fault(**spec)), timeout=10)
    assert caught.value.code() is code
    assert unpacked(caught.value, error_details_pb2.ErrorInfo).reason == reason
    # The gateway is the server's hop to retry: whenever it says when to come back, it also
    # tells gRPC clients' retry policies not to retry on their own (gRFC A6: negative).
    pushback = dict(caught.value.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
    has_retry_info = unpacked(caught.value, error_details_pb2.RetryInfo) is not None
    assert pushback == ("-1" if has_retry_info else None)


async def test_rate_limit_tells_the_caller_when_to_retry(stub: pb_grpc.RerankServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(
            seed_request(provider_options=fault(fault="rate_limit", retryAfterMs=1500)),
            timeout=10,
        )
    retry = unpacked(caught.value, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == 1500


async def test_an_unknown_model_is_not_found(stub: pb_grpc.RerankServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(seed_request(model="cohere/rerank-v99"), timeout=10)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert "cohere/rerank-v99" in (caught.value.details() or "")


async def test_a_sloppy_ranking_is_sorted_and_cut(stub: pb_grpc.RerankServiceStub) -> None:
    for variant in ("unsorted", "too_many"):
        response = await stub.Rerank(
            seed_request(provider_options=fault(fault="malformed", variant=variant)), timeout=10
        )
        assert len(response.ranking) == 2
        assert response.ranking[0].original_index == 0
        assert response.ranking[0].score >= response.ranking[1].score


async def test_the_callers_deadline_bounds_the_upstream_call(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    slow = seed_request(provider_options=fault(fault="slow", delayMs=5000))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(slow, timeout=0.3)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_thousand_documents_of_4kb(stub: pb_grpc.RerankServiceStub) -> None:
    documents = [pb.Document(text=f"document {i} " + "lorem ipsum " * 340) for i in range(1000)]
    assert documents[0].ByteSize() > 4000
    response = await stub.Rerank(
        pb.RerankRequest(query="document 7 lorem", documents=documents, top_n=5), timeout=30
    )
    assert len(response.ranking) == 5


async def test_list_models(stub: pb_grpc.RerankServiceStub) -> None:
    response = await stub.ListModels(pb.ListModelsRequest(), timeout=10)
    ids = [m.id for m in response.models]
    assert "cohere/rerank-v3.5" in ids
    assert all("rerank" in model_id for model_id in ids)
    cohere = next(m for m in response.models if m.id == "cohere/rerank-v3.5")
    assert cohere.provider == "cohere"


async def test_health_and_reflection(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "rerank.v1.RerankService"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = reflection.ServerReflectionInfo(iter([request]), timeout=5)
    names = set()
    async for response in responses:
        names |= {s.name for s in response.list_services_response.service}
    assert {"rerank.v1.RerankService", "grpc.health.v1.Health"} <= names


async def test_shutdown_lets_in_flight_calls_finish_and_refuses_new_ones() -> None:
    async def slow_gateway(request: Request) -> Reply:
        await asyncio.sleep(0.7)  # a slow answer, so the call is still in flight at the stop
        return Reply(body=b'{"ranking":[{"index":0,"relevanceScore":0.9}]}')

    async with ScriptedServer(slow_gateway) as upstream:
        running = await start_server(
            Settings(
                port=0,
                grace_period=5,
                upstream=Upstream.GATEWAY,
                gateway_url=upstream.url,
                api_key="k",
            )
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.RerankServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            slow = stub.Rerank(seed_request(), timeout=10)
            await asyncio.wait_for(upstream.request_arrived.wait(), 5)  # the call is in flight
            stopping = asyncio.create_task(running.stop())
            response = await slow
            assert response.ranking[0].original_index == 0
            await stopping
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


class ExplodingReranker:
    """A backend with a bug: no gateway can be made to raise an arbitrary exception."""

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        raise RuntimeError("secret internals: key=sk-live-123")

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
        raise KeyError("boom")

    async def aclose(self) -> None:
        pass


async def test_a_bug_answers_internal_without_leaking(caplog: pytest.LogCaptureFixture) -> None:
    running = await start_server(Settings(port=0, grace_period=1), reranker=ExplodingReranker())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.RerankServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Rerank(seed_request(), timeout=5)
            assert caught.value.code() is grpc.StatusCode.INTERNAL
            assert "sk-live-123" not in (caught.value.details() or "")
            assert "incident" in (caught.value.details() or "")
            assert "secret internals" in caplog.text  # the operator still sees it
    finally:
        await running.stop()


async def test_ten_thousand_documents_rank_like_one_call(stub: pb_grpc.RerankServiceStub) -> None:
    """Split into windows of 1,000 upstream, merged: the best five are the mock's global best."""
    texts = [
        f"passage {i} about {'capital cities' if i % 97 == 0 else 'rivers'}" for i in range(10_000)
    ]
    query = "which capital cities"
    response = await stub.Rerank(
        pb.RerankRequest(query=query, documents=[pb.Document(text=t) for t in texts], top_n=5),
        timeout=60,
    )
    expected = sorted(range(len(texts)), key=lambda i: (-score(SEED_MODEL, query, texts[i]), i))
    assert [r.original_index for r in response.ranking] == expected[:5]
    # The mock reports how many documents it saw: one window's worth, not all 10,000.
    assert response.provider_metadata["mock"]["documents"] == 1000


async def test_repeats_are_served_from_the_cache_unless_bypassed(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    first = await stub.Rerank(seed_request(), timeout=10)
    again = await stub.Rerank(seed_request(), timeout=10)
    bypassed = await stub.Rerank(seed_request(bypass_cache=True), timeout=10)
    assert (first.cached, again.cached, bypassed.cached) == (False, True, False)
    assert again.ranking == first.ranking == bypassed.ranking
    assert len({first.id, again.id, bypassed.id}) == 3
